#include "services/query/http_frontend.h"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "libs/common/client_text.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"
#include "nlohmann/json.hpp"
#include "services/query/web_page.h"

namespace imagesearch {
namespace {

using json = nlohmann::json;

constexpr char kJson[] = "application/json";

HttpResponse ErrorResponse(const absl::Status& s, int http_status = 0) {
  HttpResponse res;
  res.status = http_status != 0 ? http_status : HttpStatusOf(s.code());
  json body = {
      {"error",
       {{"code", absl::StatusCodeToString(s.code())}, {"message", std::string(s.message())}}}};
  // Messages may quote request text cut at a byte limit (half a UTF-8
  // character); dump() would throw on that and turn the answer into a 500.
  res.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  res.content_type = kJson;
  return res;
}

HttpResponse Content(std::string body, std::string type) {
  HttpResponse res;
  res.body = std::move(body);
  res.content_type = std::move(type);
  return res;
}

// "image/png; q=1" -> "image/png".
std::string MediaType(const HttpRequest& req) {
  absl::string_view type = req.Header("content-type");
  type = type.substr(0, type.find(';'));
  return absl::AsciiStrToLower(absl::StripAsciiWhitespace(type));
}

// Sets `to`'s singular scalar field `f` to `from`'s value.
void CopyScalarField(const google::protobuf::Message& from,
                     const google::protobuf::FieldDescriptor* f, google::protobuf::Message* to) {
  using FD = google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* in = from.GetReflection();
  const google::protobuf::Reflection* out = to->GetReflection();
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT32:
      return out->SetInt32(to, f, in->GetInt32(from, f));
    case FD::CPPTYPE_INT64:
      return out->SetInt64(to, f, in->GetInt64(from, f));
    case FD::CPPTYPE_UINT32:
      return out->SetUInt32(to, f, in->GetUInt32(from, f));
    case FD::CPPTYPE_UINT64:
      return out->SetUInt64(to, f, in->GetUInt64(from, f));
    case FD::CPPTYPE_FLOAT:
      return out->SetFloat(to, f, in->GetFloat(from, f));
    case FD::CPPTYPE_DOUBLE:
      return out->SetDouble(to, f, in->GetDouble(from, f));
    case FD::CPPTYPE_BOOL:
      return out->SetBool(to, f, in->GetBool(from, f));
    case FD::CPPTYPE_ENUM:
      return out->SetEnumValue(to, f, in->GetEnumValue(from, f));
    case FD::CPPTYPE_STRING:
      return out->SetString(to, f, in->GetString(from, f));
    case FD::CPPTYPE_MESSAGE:
      return;  // Not a scalar; IsParamField keeps these out.
  }
}

// Replaces invalid UTF-8 in every string (not bytes) field of `m`, nested
// messages included.
void MakeStringsValidUtf8(google::protobuf::Message* m) {
  using FD = google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = m->GetReflection();
  std::vector<const FD*> fields;
  r->ListFields(*m, &fields);
  for (const FD* f : fields) {
    if (f->type() == FD::TYPE_STRING) {
      std::string scratch;
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(*m, f); ++i) {
          const std::string& v = r->GetRepeatedStringReference(*m, f, i, &scratch);
          if (!IsValidUtf8(v)) r->SetRepeatedString(m, f, i, ToValidUtf8(v));
        }
      } else {
        const std::string& v = r->GetStringReference(*m, f, &scratch);
        if (!IsValidUtf8(v)) r->SetString(m, f, ToValidUtf8(v));
      }
    } else if (f->cpp_type() == FD::CPPTYPE_MESSAGE) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(*m, f); ++i) {
          MakeStringsValidUtf8(r->MutableRepeatedMessage(m, f, i));
        }
      } else {
        MakeStringsValidUtf8(r->MutableMessage(m, f));
      }
    }
  }
}

// Proto3 JSON, as protobuf's own mapping writes it, with the .proto's field
// names (snake_case) and every field present, zeros included.
std::string ToJson(google::protobuf::Message* message) {
  // Protobuf's printer silently drops the bytes of a string that are not
  // UTF-8 (a snapshot's ids and URIs are its bytes, unchecked when read):
  // replace them with U+FFFD instead, visibly.
  MakeStringsValidUtf8(message);
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(*message, &out, options);
  return out;
}

// Parses proto3 JSON (field names as in the .proto or lowerCamelCase) into
// `out`. Protobuf's error text repeats client text whole (an unknown key,
// a bad value), so it is cut: "<where>: <what>" keeps at most
// kMaxQuotedBytes of <where> and 160 bytes of <what>.
absl::Status ParseJson(absl::string_view json_text, absl::string_view what,
                       google::protobuf::Message* out) {
  google::protobuf::util::JsonParseOptions options;
  const auto s = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece(json_text.data(), json_text.size()), out, options);
  if (s.ok()) return absl::OkStatus();
  const absl::string_view message(s.message().data(), s.message().size());
  const size_t colon = message.find(": ");
  const std::string bounded =
      colon == absl::string_view::npos || colon == 0
          ? TruncateClientText(message, 160)
          : absl::StrCat(TruncateClientText(message.substr(0, colon), kMaxQuotedBytes), ": ",
                         TruncateClientText(message.substr(colon + 2), 160));
  return absl::InvalidArgumentError(absl::StrCat(
      what, ": ", bounded, " (", out->GetDescriptor()->full_name(), " in proto3 JSON)"));
}

// The fields of SearchRequest a query parameter can set: its singular
// scalars outside the `query` oneof (top_k, ef, include_self, dedup, ...).
bool IsParamField(const google::protobuf::FieldDescriptor* f) {
  return f != nullptr && !f->is_repeated() && f->containing_oneof() == nullptr &&
         f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE;
}

std::string ParamNames() {
  const google::protobuf::Descriptor* d = v1::SearchRequest::descriptor();
  std::string names;
  for (int i = 0; i < d->field_count(); ++i) {
    if (IsParamField(d->field(i))) absl::StrAppend(&names, d->field(i)->name(), ", ");
  }
  return absl::StrCat(names, "timeout_ms");
}

// Query parameters: any scalar field of SearchRequest (by its .proto or
// JSON name, with its proto3 JSON syntax), plus timeout_ms. They override
// the same fields of a JSON body.
absl::Status ApplyParams(const HttpRequest& req, v1::SearchRequest* request,
                         absl::Duration* timeout) {
  const google::protobuf::Descriptor* d = v1::SearchRequest::descriptor();
  json fields = json::object();
  std::vector<const google::protobuf::FieldDescriptor*> set;
  for (const auto& [key, value] : req.params) {
    if (key == "timeout_ms") {
      uint32_t ms = 0;
      if (!absl::SimpleAtoi(value, &ms)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "timeout_ms must be a non-negative integer, got ", QuoteClientText(value)));
      }
      *timeout = absl::Milliseconds(ms);
      continue;
    }
    const google::protobuf::FieldDescriptor* f = d->FindFieldByName(key);
    if (f == nullptr) f = d->FindFieldByCamelcaseName(key);
    if (!IsParamField(f)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown query parameter ", QuoteClientText(key), "; known: ", ParamNames()));
    }
    fields[f->name()] = value;  // Proto3 JSON takes numbers and booleans as strings too.
    set.push_back(f);
  }
  if (set.empty()) return absl::OkStatus();
  v1::SearchRequest params;
  RETURN_IF_ERROR(ParseJson(fields.dump(), "query parameters", &params));
  for (const google::protobuf::FieldDescriptor* f : set) CopyScalarField(params, f, request);
  return absl::OkStatus();
}

// The deadline counts from when the request's head arrived; the call is
// cancelled once its client has closed the connection.
serving::CallContext HttpContext(const HttpRequest& req, absl::Duration timeout) {
  serving::CallContext context;
  context.front = "http";
  context.deadline = req.received + timeout;
  if (req.client_gone != nullptr) {
    context.cancelled = [gone = req.client_gone] { return gone->load(); };
  }
  return context;
}

absl::Status TooLarge(const HttpRequest& req, size_t limit) {
  const absl::string_view length = req.Header("content-length").substr(0, 20);
  return absl::ResourceExhaustedError(
      length.empty() ? absl::StrCat("request body exceeds the limit of ", limit, " bytes")
                     : absl::StrCat("request body is ", length, " bytes; the limit is ", limit));
}

bool IsImageType(const std::string& type) {
  return type == "image/jpeg" || type == "image/png" || type == "image/webp" ||
         type == "application/x-image";
}

}  // namespace

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kFailedPrecondition:
      return 412;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;  // Client closed request (nginx's convention).
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

struct HttpFrontend::Route {
  const char* method;  // "GET" routes answer HEAD too.
  const char* path;    // Exact, or with `prefix` a longer path starting with it.
  bool prefix;
  const char* name;  // The `method` label of the request metrics.
  bool open;         // Served without the bearer token.
  bool on_worker;    // Runs on a worker: it parses bodies, searches or reads the snapshot.
  Handler handler;
};

const std::vector<HttpFrontend::Route>& HttpFrontend::Routes() {
  static const std::vector<Route> routes = {
      // The orchestrator's health check (SageMaker, k8s) needs no token.
      {"GET", "/ping", false, "Ping", true, false, &HttpFrontend::Ping},
      {"GET", "/metrics", false, "Metrics", false, false, &HttpFrontend::MetricsText},
      {"GET", "/", false, "Page", false, false, &HttpFrontend::Page},
      {"GET", "/info", false, "GetInfo", false, false, &HttpFrontend::Info},
      {"GET", "/thumbs/", true, "Thumbnail", false, true, &HttpFrontend::Thumbnail},
      {"GET", "/invocations", false, "Search", false, false, &HttpFrontend::InvocationsGet},
      {"POST", "/invocations", false, "Search", false, true, &HttpFrontend::Invocations},
  };
  return routes;
}

HttpFrontend::HttpFrontend(HttpBackend* backend, serving::Metrics* metrics,
                           HttpFrontendOptions options)
    : backend_(backend),
      metrics_(metrics),
      options_(std::move(options)),
      gate_(options_.token, metrics) {}

HttpFrontend::~HttpFrontend() { Stop(); }

absl::Status HttpFrontend::Start() {
  HttpServerOptions so;
  so.host = options_.host;
  so.port = options_.port;
  so.max_body_bytes = options_.max_body_bytes;
  so.read_timeout = options_.read_timeout;
  so.write_timeout = options_.read_timeout;
  if (options_.tls != nullptr) {
    so.configure_tls = [tls = options_.tls](SSL_CTX* ctx) {
      return ConfigureServerSslContext(ctx, *tls);
    };
  }
  server_ = std::make_unique<HttpServer>(
      so, [this](const HttpRequest& req) { return CheckHead(req); },
      [this](HttpRequest req, HttpResponder respond) {
        Dispatch(std::move(req), std::move(respond));
      },
      // A request the server itself refuses never reached a route: counted
      // under method "Malformed".
      [this](int status, absl::string_view message) {
        const absl::Status s = status == 408 ? absl::DeadlineExceededError(message)
                               : status == 501 || status == 505
                                   ? absl::UnimplementedError(message)
                                   : absl::InvalidArgumentError(message);
        return ErrorResponse(gate_.Refuse("http", "Malformed", s), status);
      });
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = false;
  }
  for (int i = 0; i < std::max(1, options_.threads); ++i) {
    workers_.emplace_back([this] { Work(); });
    pthread_setname_np(workers_.back().native_handle(), "http-worker");
  }
  absl::Status s = server_->Start();
  if (!s.ok()) Stop();
  return s;
}

int HttpFrontend::port() const { return server_ != nullptr ? server_->port() : 0; }

void HttpFrontend::Stop() {
  // Requests being worked on have until their deadline, at most 10 s, to be
  // answered; their answers need the workers, which stop after the server.
  if (server_ != nullptr) server_->Stop(std::min(options_.timeout, absl::Seconds(10)));
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  server_.reset();
}

bool HttpFrontend::Enqueue(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || queue_.size() >= options_.max_queued) return false;
    queue_.push_back(std::move(task));
  }
  work_cv_.notify_one();
  return true;
}

void HttpFrontend::Work() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

const HttpFrontend::Route* HttpFrontend::FindRoute(const HttpRequest& req) {
  for (const Route& r : Routes()) {
    const bool method = req.method == r.method || (req.method == "HEAD" && r.method[0] == 'G');
    const bool path = r.prefix
                          ? absl::StartsWith(req.path, r.path) && req.path.size() > strlen(r.path)
                          : req.path == r.path;
    if (method && path) return &r;
  }
  return nullptr;
}

// The `method` label of a request that matches no route.
constexpr char kNoRoute[] = "unknown";

HttpResponse HttpFrontend::Refuse(absl::string_view method, const absl::Status& status,
                                  int http_status) const {
  return ErrorResponse(gate_.Refuse("http", method, status), http_status);
}

// Before the body: the token, and the body's announced size.
std::optional<HttpResponse> HttpFrontend::CheckHead(const HttpRequest& req) {
  const Route* route = FindRoute(req);
  const absl::string_view method = route != nullptr ? route->name : kNoRoute;
  if (route == nullptr || !route->open) {
    std::vector<absl::string_view> authorization;
    for (const auto& [name, value] : req.headers) {
      if (name == "authorization") authorization.push_back(value);
    }
    if (absl::Status s = gate_.Authenticate("http", method, authorization); !s.ok()) {
      HttpResponse r = ErrorResponse(s, 401);
      r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"imagesearch\"");
      return r;
    }
  }
  if (req.body_too_large) return Refuse(method, TooLarge(req, options_.max_body_bytes), 413);
  return std::nullopt;
}

void HttpFrontend::Dispatch(HttpRequest req, HttpResponder respond) {
  const Route* route = FindRoute(req);
  const absl::string_view method = route != nullptr ? route->name : kNoRoute;
  if (req.body_too_large) {  // A chunked body that outgrew the limit.
    return respond.Send(Refuse(method, TooLarge(req, options_.max_body_bytes), 413));
  }
  if (route == nullptr) {
    return respond.Send(Refuse(
        method,
        absl::NotFoundError(absl::StrCat(
            "no route for ", TruncateClientText(req.method, 16), " ", QuoteClientText(req.path),
            "; routes: GET /, GET /ping, GET /info, POST /invocations, "
            "GET /thumbs/{id}, GET /metrics"))));
  }
  if (!route->on_worker) return (this->*route->handler)(std::move(req), std::move(respond));
  const size_t queued = options_.max_queued;
  if (!Enqueue([this, handler = route->handler, req = std::move(req), respond]() mutable {
        (this->*handler)(std::move(req), std::move(respond));
      })) {
    respond.Send(Refuse(
        method,
        absl::ResourceExhaustedError(absl::StrCat(
            "server overloaded: ", queued, " HTTP requests are waiting for a worker; retry later")),
        429));
  }
}

void HttpFrontend::Ping(HttpRequest, HttpResponder respond) {
  HttpResponse r;
  r.status = backend_->Serving() ? 200 : 503;
  respond.Send(std::move(r));
}

void HttpFrontend::MetricsText(HttpRequest, HttpResponder respond) {
  respond.Send(Content(metrics_->Serialize(), "text/plain; version=0.0.4; charset=utf-8"));
}

// The search page. Its policy keeps it to this origin: no external fetches.
void HttpFrontend::Page(HttpRequest, HttpResponder respond) {
  HttpResponse r = Content(std::string(WebPageHtml()), "text/html; charset=utf-8");
  r.headers = {{"Cache-Control", "no-cache"},
               {"X-Content-Type-Options", "nosniff"},
               {"Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"}};
  respond.Send(std::move(r));
}

void HttpFrontend::Info(HttpRequest req, HttpResponder respond) {
  backend_->GetInfo(HttpContext(req, options_.timeout),
                    [respond](absl::StatusOr<v1::GetInfoResponse> info) mutable {
                      if (!info.ok()) return respond.Send(ErrorResponse(info.status()));
                      respond.Send(Content(ToJson(&*info), kJson));
                    });
}

// Thumbnails come only from the live snapshot's thumbs.bin, looked up by
// id: nothing in the request names a file.
void HttpFrontend::Thumbnail(HttpRequest req, HttpResponder respond) {
  std::string id = req.path.substr(strlen("/thumbs/"));
  std::string if_none_match(req.Header("if-none-match"));
  backend_->GetThumbnail(
      std::move(id), HttpContext(req, options_.timeout),
      [respond, if_none_match](absl::StatusOr<v1::GetThumbnailResponse> thumb) mutable {
        if (!thumb.ok()) return respond.Send(ErrorResponse(thumb.status()));
        // Content-addressed: the same picture keeps its ETag across versions.
        const std::string etag = absl::StrCat("\"", Xxh3Hex(thumb->data()), "\"");
        HttpResponse r;
        r.headers = {{"ETag", etag},
                     {"Cache-Control", "public, max-age=300"},
                     {"X-Content-Type-Options", "nosniff"}};
        if (if_none_match == etag) {
          r.status = 304;
        } else {
          r.body = std::move(*thumb->mutable_data());
          r.content_type = thumb->media_type();
        }
        respond.Send(std::move(r));
      });
}

void HttpFrontend::InvocationsGet(HttpRequest, HttpResponder respond) {
  respond.Send(Refuse("Search", absl::UnimplementedError("use POST /invocations"), 405));
}

// On a worker: parses the query and starts it through the backend; the backend's
// callback answers (here for refusals and vector/id queries, on a model
// thread for image and text queries).
void HttpFrontend::Invocations(HttpRequest req, HttpResponder respond) {
  struct Call {
    HttpRequest req;
    v1::SearchRequest request;
  };
  auto call = std::make_shared<Call>();
  call->req = std::move(req);
  absl::Duration timeout = options_.timeout;
  const std::string type = MediaType(call->req);
  absl::Status parsed;
  if (IsImageType(type)) {
    call->request.set_image(std::move(call->req.body));
  } else if (type == kJson) {
    parsed = ParseJson(call->req.body, "request body", &call->request);
  } else {
    return respond.Send(Refuse(
        "Search",
        absl::InvalidArgumentError(absl::StrCat(
            "Content-Type ", QuoteClientText(type),
            " is not supported; send image/jpeg, image/png, image/webp, application/x-image or "
            "application/json")),
        415));
  }
  if (parsed.ok()) parsed = ApplyParams(call->req, &call->request, &timeout);
  if (!parsed.ok()) return respond.Send(Refuse("Search", parsed));
  const serving::CallContext context = HttpContext(call->req, timeout);
  backend_->Search(std::move(call->request), context,
                   [call, respond](absl::StatusOr<v1::SearchResponse> r) mutable {
                     if (!r.ok()) return respond.Send(ErrorResponse(r.status()));
                     respond.Send(Content(ToJson(&*r), kJson));
                   });
}

}  // namespace imagesearch
