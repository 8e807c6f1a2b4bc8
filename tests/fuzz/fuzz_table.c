/* fuzz_table.c - see fuzz_table.h. */
#include "fuzz_table.h"

#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "antifragility/v1/metering.pb-c.h"
#include "antifragility/v1/recovery.pb-c.h"
#include "fuzz_methods.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

#define FZ_KIND_UNARY FZ_UNARY
#define FZ_KIND_CS FZ_CS
#define FZ_KIND_SS FZ_SS
#define ROW(svc, m, req, req_s, resp, resp_s, kind)                            \
  {"/antifragility.v1." #svc "/" #m,                                           \
   &antifragility__v1__##req_s##__descriptor,                                  \
   &antifragility__v1__##resp_s##__descriptor, FZ_KIND_##kind},

const fz_method_t fz_methods[] = {
    AF_FUZZ_METHODS(ROW){"/grpc.health.v1.Health/Check",
                         &grpc__health__v1__health_check_request__descriptor,
                         &grpc__health__v1__health_check_response__descriptor,
                         FZ_UNARY},
    {"/grpc.health.v1.Health/Watch",
     &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, FZ_SS},
    {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
     &grpc__reflection__v1__server_reflection_request__descriptor,
     &grpc__reflection__v1__server_reflection_response__descriptor, FZ_BIDI},
    {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
     &grpc__reflection__v1__server_reflection_request__descriptor,
     &grpc__reflection__v1__server_reflection_response__descriptor, FZ_BIDI},
};
const size_t fz_method_count = sizeof fz_methods / sizeof fz_methods[0];
