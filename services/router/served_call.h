// Unary calls served on gRPC's asynchronous API and the router's completion
// threads (completion_threads.h): each call is taken from a queue, answered
// by a function that may finish on any thread, and sent back.
#ifndef IMAGESEARCH_SERVICES_ROUTER_SERVED_CALL_H_
#define IMAGESEARCH_SERVICES_ROUTER_SERVED_CALL_H_

#include <grpcpp/grpcpp.h>

#include <functional>

#include "absl/status/statusor.h"
#include "services/router/completion_threads.h"
#include "services/router/shard_client.h"

namespace imagesearch::router {

// A unary method as the router serves it on gRPC's asynchronous API: how to
// ask a queue for its next call, and what answers one (`done` once, on any
// thread).
template <typename Request, typename Response>
struct Method {
  const char* name;  // For metrics: "Search", ...
  std::function<void(grpc::ServerContext*, Request*, grpc::ServerAsyncResponseWriter<Response>*,
                     grpc::ServerCompletionQueue*, void*)>
      request;
  std::function<void(const grpc::ServerContext&, const Request&,
                     std::function<void(absl::StatusOr<Response>)>)>
      answer;
};

// One call of `method` on one queue: requested, then answered on the thread
// that polls the queue (the shard calls it starts complete there too; see
// completion_threads.h), then gone once its answer is sent.
template <typename Request, typename Response>
class ServedCall final : public CqTag {
 public:
  // Asks `queue` for the next call of `method`.
  static void Await(const Method<Request, Response>* method, CompletionThreads* threads,
                    grpc::ServerCompletionQueue* queue) {
    auto* call = new ServedCall(method, threads, queue);
    const bool ran = threads->IfRunning([&] {
      method->request(&call->context_, &call->request_, &call->writer_, queue, call->GrpcTag());
    });
    if (!ran) delete call;
  }

  void Proceed(bool ok) override {
    if (!ok || answering_) {  // The server is stopping, or the answer went out.
      delete this;
      return;
    }
    answering_ = true;
    Await(method_, threads_, queue_);  // The next call of this method.
    method_->answer(context_, request_, [this](absl::StatusOr<Response> r) {
      const bool ran = threads_->IfRunning([&] {
        if (r.ok()) {
          writer_.Finish(*r, grpc::Status::OK, GrpcTag());
        } else {
          writer_.FinishWithError(ToGrpc(r.status()), GrpcTag());
        }
      });
      if (!ran) delete this;  // The server is gone; nothing will deliver this.
    });
  }

 private:
  ServedCall(const Method<Request, Response>* method, CompletionThreads* threads,
             grpc::ServerCompletionQueue* queue)
      : method_(method), threads_(threads), queue_(queue), writer_(&context_) {}

  const Method<Request, Response>* const method_;
  CompletionThreads* const threads_;
  grpc::ServerCompletionQueue* const queue_;
  grpc::ServerContext context_;
  Request request_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  bool answering_ = false;
};

}  // namespace imagesearch::router

#endif  // IMAGESEARCH_SERVICES_ROUTER_SERVED_CALL_H_
