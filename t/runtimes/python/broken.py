# A runtime module that does not import.
import resty_ffi

RATIO = 1 / 0


def init(cfg, tq):
    return 0
