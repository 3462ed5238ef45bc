module example.invalid/resty_grpc_zc/runtimes/go

go 1.19
