module example.invalid/resty_grpc_zc/t/runtimes/go

go 1.19

require example.invalid/resty_grpc_zc/runtimes/go v0.0.0

replace example.invalid/resty_grpc_zc/runtimes/go => ../../../runtimes/go
