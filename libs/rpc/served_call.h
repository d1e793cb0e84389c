// Unary calls served on gRPC's asynchronous API and a server's completion
// threads (completion_threads.h): each call is taken from a queue, answered
// by a function that may finish on any thread, and sent back.
#ifndef IMAGESEARCH_LIBS_RPC_SERVED_CALL_H_
#define IMAGESEARCH_LIBS_RPC_SERVED_CALL_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "libs/rpc/completion_threads.h"

namespace imagesearch::rpc {

// grpc::Status <-> absl::Status (the codes are the same numbers).
inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}
inline absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// What an answer may ask of the call it answers.
class CallInfo {
 public:
  CallInfo(const grpc::ServerContext& context, std::shared_ptr<const std::atomic<bool>> cancelled)
      : context_(context), cancelled_(std::move(cancelled)) {}

  const grpc::ServerContext& context() const { return context_; }
  // A function that says whether the client has gone (cancelled, or its
  // deadline passed, or its connection broke): false until gRPC says so.
  // Valid on any thread, for as long as anyone holds it. Always false for a
  // method without `watch_cancellation`.
  std::function<bool()> Cancelled() const {
    if (!cancelled_) return [] { return false; };
    return [flag = cancelled_] { return flag->load(std::memory_order_acquire); };
  }

 private:
  const grpc::ServerContext& context_;
  std::shared_ptr<const std::atomic<bool>> cancelled_;
};

// A unary method as a server serves it on gRPC's asynchronous API: how to
// ask a queue for its next call, and what answers one (`done` once, on any
// thread).
template <typename Request, typename Response>
struct Method {
  std::function<void(grpc::ServerContext*, Request*, grpc::ServerAsyncResponseWriter<Response>*,
                     grpc::ServerCompletionQueue*, void*)>
      request;
  std::function<void(const CallInfo&, const Request&,
                     std::function<void(absl::StatusOr<Response>)>)>
      answer;
  // Ask gRPC to say when each call ends (AsyncNotifyWhenDone), so that
  // CallInfo::Cancelled can tell a client that left: one more completion a
  // call, on the same thread.
  bool watch_cancellation = false;
  // Metadata sent with every answer (initial metadata), or none. Set before
  // the first call is awaited, and not changed after.
  const std::vector<std::pair<std::string, std::string>>* initial_metadata = nullptr;
};

// One call of `method` on one queue: requested, then answered on the thread
// that polls the queue (the client calls it starts complete there too; see
// completion_threads.h), then gone once its answer is sent and, where the
// method watches for cancellation, gRPC has said the call ended.
template <typename Request, typename Response>
class ServedCall final : public CqTag {
 public:
  // Asks each of `threads`' queues for `count` calls of `method` at a time:
  // each call taken asks for the next at once; a call that arrives while
  // none is asked for waits in gRPC until then, and is cancelled if the
  // server stops meanwhile.
  static void AwaitOnEveryQueue(const Method<Request, Response>* method, CompletionThreads* threads,
                                int count) {
    for (size_t q = 0; q < threads->size(); ++q) {
      for (int k = 0; k < count; ++k) Await(method, threads, threads->server_queue(q));
    }
  }

  // Asks `queue` for the next call of `method`.
  static void Await(const Method<Request, Response>* method, CompletionThreads* threads,
                    grpc::ServerCompletionQueue* queue) {
    auto* call = new ServedCall(method, threads, queue);
    if (method->watch_cancellation) call->context_.AsyncNotifyWhenDone(call->ended_.GrpcTag());
    const bool ran = threads->IfRunning([&] {
      method->request(&call->context_, &call->request_, &call->writer_, queue, call->GrpcTag());
    });
    if (!ran) {
      delete call;
      return;
    }
    call->Release(1);  // This thread's hold (see refs_).
  }

  void Proceed(bool ok) override {
    if (answering_) {  // The answer went out (or could not).
      Release(1);
      return;
    }
    if (!ok) {  // The server is stopping; no call came, and no end is reported.
      Release(method_->watch_cancellation ? 2 : 1);
      return;
    }
    answering_ = true;
    Await(method_, threads_, queue_);  // The next call of this method.
    if (method_->initial_metadata != nullptr) {
      for (const auto& [key, value] : *method_->initial_metadata) {
        context_.AddInitialMetadata(key, value);
      }
    }
    method_->answer(CallInfo(context_, cancelled_), request_, [this](absl::StatusOr<Response> r) {
      refs_.fetch_add(1, std::memory_order_relaxed);  // This thread's hold (see refs_).
      const bool ran = threads_->IfRunning([&] {
        if (r.ok()) {
          writer_.Finish(*r, grpc::Status::OK, GrpcTag());
        } else {
          writer_.FinishWithError(ToGrpc(r.status()), GrpcTag());
        }
      });
      // Without `ran`, the server is gone and nothing will deliver the answer.
      Release(ran ? 1 : 2);
    });
  }

 private:
  // gRPC's report that the call ended (AsyncNotifyWhenDone).
  struct Ended final : CqTag {
    explicit Ended(ServedCall* c) : call(c) {}
    void Proceed(bool) override {
      call->cancelled_->store(call->context_.IsCancelled(), std::memory_order_release);
      call->Release(1);
    }
    ServedCall* const call;
  };

  ServedCall(const Method<Request, Response>* method, CompletionThreads* threads,
             grpc::ServerCompletionQueue* queue)
      : method_(method),
        threads_(threads),
        queue_(queue),
        writer_(&context_),
        ended_(this),
        cancelled_(method->watch_cancellation ? std::make_shared<std::atomic<bool>>(false)
                                              : nullptr),
        refs_(method->watch_cancellation ? 3 : 2) {}

  void Release(int n) {
    if (refs_.fetch_sub(n, std::memory_order_acq_rel) == n) delete this;
  }

  const Method<Request, Response>* const method_;
  CompletionThreads* const threads_;
  grpc::ServerCompletionQueue* const queue_;
  grpc::ServerContext context_;
  Request request_;
  grpc::ServerAsyncResponseWriter<Response> writer_;
  Ended ended_;
  const std::shared_ptr<std::atomic<bool>> cancelled_;
  bool answering_ = false;
  // Who holds the call: the request and then its answer; gRPC's report that
  // the call ended (which can come first, on another thread); and a thread
  // while it starts an operation on the call (the request, the Finish). The
  // last to let go deletes it. The starting thread's hold is what orders,
  // for ThreadSanitizer, the writes gRPC's inlined headers make inside the
  // operation (after the tag was released to the queue) before the delete on
  // another thread; libgrpc orders them in fact, unseen.
  std::atomic<int> refs_;
};

}  // namespace imagesearch::rpc

#endif  // IMAGESEARCH_LIBS_RPC_SERVED_CALL_H_
