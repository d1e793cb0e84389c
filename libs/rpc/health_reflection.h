// gRPC's standard health (grpc.health.v1.Health: Check and the streaming
// Watch) and server reflection (grpc.reflection.v1 and v1alpha) services,
// served on a server's completion threads like its ImageSearch calls
// (imagesearch-query's and imagesearch-router's).
//
// Not gRPC's own implementations (EnableDefaultHealthCheckService, a
// callback service, and libgrpc++_reflection, a sync service): each brings
// threads that poll the same file descriptors as the completion threads,
// and gRPC 1.51 hands events between its polling threads through futexes,
// which doubled the router's CPU per query and cost a replica's unary call
// (tools/bench/results/LOG.md, "The router on one completion thread", "The
// replica on its own completion threads").
//
// Thread-safe.
#ifndef IMAGESEARCH_LIBS_RPC_HEALTH_REFLECTION_H_
#define IMAGESEARCH_LIBS_RPC_HEALTH_REFLECTION_H_

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "libs/rpc/completion_threads.h"
#include "libs/rpc/served_call.h"

namespace imagesearch::rpc {

class HealthService {
 public:
  // Knows the server as a whole ("") and `services`, all NOT_SERVING.
  HealthService(CompletionThreads* threads, const std::vector<std::string>& services);

  grpc::Service* service() { return &service_; }
  // Once the server is built: takes Check and Watch calls on every queue.
  void Start();
  // Every service known, and the server: SERVING or NOT_SERVING; watchers
  // are told. Ignored after Shutdown.
  void SetServing(bool serving);
  // NOT_SERVING, and every Watch stream ends (OK) once it has said so, so
  // that grpc::Server::Shutdown need not wait for them.
  void Shutdown();

 private:
  class WatchCall;
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;
  Status StatusOf(const std::string& service) const;  // REQUIRES: mu_ held.
  void AwaitWatch(grpc::ServerCompletionQueue* queue);

  CompletionThreads* const threads_;
  grpc::health::v1::Health::AsyncService service_;
  Method<grpc::health::v1::HealthCheckRequest, grpc::health::v1::HealthCheckResponse> check_;
  mutable std::mutex mu_;
  std::map<std::string, bool> serving_;  // Guarded by mu_.
  std::set<WatchCall*> watchers_;        // Guarded by mu_.
  bool closing_ = false;                 // Guarded by mu_.
};

class ReflectionService {
 public:
  // `services`: the full names list_services answers with (this service's
  // two versions are added). Files come from protobuf's generated pool.
  ReflectionService(CompletionThreads* threads, std::vector<std::string> services);

  std::vector<grpc::Service*> services() { return {&v1_, &v1alpha_}; }
  // Once the server is built: takes calls of both versions on every queue.
  void Start();

 private:
  template <typename Proto>
  class Stream;

  CompletionThreads* const threads_;
  std::vector<std::string> names_;
  grpc::reflection::v1::ServerReflection::AsyncService v1_;
  grpc::reflection::v1alpha::ServerReflection::AsyncService v1alpha_;
};

}  // namespace imagesearch::rpc

#endif  // IMAGESEARCH_LIBS_RPC_HEALTH_REFLECTION_H_
