#include "services/query/http_frontend.h"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "nlohmann/json.hpp"
#include "services/query/web_page.h"

namespace imagesearch {
namespace {

using json = nlohmann::json;
using serving::Query;

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

absl::StatusOr<uint32_t> ParseUint32(absl::string_view name, absl::string_view text) {
  uint32_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be a non-negative integer, got '", text, "'"));
  }
  return v;
}

// Query parameters: top_k, ef, include_self and timeout_ms.
absl::Status ApplyParams(const HttpRequest& req, Query* q, absl::Duration* timeout) {
  for (const auto& [key, value] : req.params) {
    if (key == "top_k" || key == "ef" || key == "timeout_ms") {
      auto v = ParseUint32(key, value);
      if (!v.ok()) return v.status();
      if (key == "top_k") q->params.top_k = *v;
      if (key == "ef") q->params.ef = *v;
      if (key == "timeout_ms") *timeout = absl::Milliseconds(*v);
    } else if (key == "dedup") {
      float d = 0;
      if (!absl::SimpleAtof(value, &d)) {
        return absl::InvalidArgumentError(
            absl::StrCat("dedup must be a number from 0 to 1, got '", value.substr(0, 32), "'"));
      }
      q->params.dedup = d;
    } else if (key == "include_self") {
      if (value != "true" && value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("include_self must be true or false, got '", value, "'"));
      }
      q->include_self = value == "true";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown query parameter '", key.substr(0, 64),
          "'; known: top_k, ef, include_self, dedup, timeout_ms"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> JsonUint32(const json& j, const char* name) {
  if (!j.is_number_unsigned() || j.get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be a non-negative 32-bit integer, got ", j.dump()));
  }
  return static_cast<uint32_t>(j.get<uint64_t>());
}

absl::StatusOr<serving::FilterValue> FilterValueFromJson(const json& v, absl::string_view what) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() &&
      !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX})) {
    return v.get<int64_t>();
  }
  if (v.is_number()) return v.get<double>();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be a string, number or boolean, got ",
                                                 v.dump().substr(0, 40)));
}

// {"must"|"should"|"must_not": [{"field", "match"|"in"|"range"|"has_id"}]},
// as the proto's Filter with plain JSON scalars for values.
absl::Status FilterFromJson(const json& j, serving::Filter* out) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError("filter must be an object with must, should and must_not lists");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::vector<serving::Condition>* list = it.key() == "must"       ? &out->must
                                            : it.key() == "should"   ? &out->should
                                            : it.key() == "must_not" ? &out->must_not
                                                                     : nullptr;
    if (list == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown filter key '", it.key().substr(0, 64),
                                                     "'; known: must, should, must_not"));
    }
    if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat("filter ", it.key(), " must be a list"));
    for (const json& c : *it) {
      if (!c.is_object()) return absl::InvalidArgumentError("a filter condition must be an object");
      serving::Condition x;
      int tests = 0;
      for (auto f = c.begin(); f != c.end(); ++f) {
        const std::string& key = f.key();
        const json& v = f.value();
        if (key == "field") {
          if (!v.is_string()) return absl::InvalidArgumentError("filter field must be a string");
          x.field = v.get<std::string>();
        } else if (key == "match") {
          ++tests;
          x.kind = serving::Condition::Kind::kMatch;
          auto value = FilterValueFromJson(v, "filter match value");
          if (!value.ok()) return value.status();
          x.values = {*std::move(value)};
        } else if (key == "in") {
          ++tests;
          x.kind = serving::Condition::Kind::kIn;
          if (!v.is_array()) return absl::InvalidArgumentError("filter in must be a list of values");
          for (const json& e : v) {
            auto value = FilterValueFromJson(e, "filter in value");
            if (!value.ok()) return value.status();
            x.values.push_back(*std::move(value));
          }
        } else if (key == "range") {
          ++tests;
          x.kind = serving::Condition::Kind::kRange;
          if (!v.is_object()) return absl::InvalidArgumentError("filter range must be an object");
          for (auto b = v.begin(); b != v.end(); ++b) {
            auto value = FilterValueFromJson(b.value(), absl::StrCat("filter range ", b.key()));
            if (!value.ok()) return value.status();
            if (b.key() == "gte") {
              x.gte = *value;
            } else if (b.key() == "gt") {
              x.gt = *value;
            } else if (b.key() == "lte") {
              x.lte = *value;
            } else if (b.key() == "lt") {
              x.lt = *value;
            } else {
              return absl::InvalidArgumentError(absl::StrCat(
                  "unknown range bound '", b.key().substr(0, 32), "'; known: gte, gt, lte, lt"));
            }
          }
        } else if (key == "has_id") {
          ++tests;
          x.kind = serving::Condition::Kind::kHasId;
          if (!v.is_array()) return absl::InvalidArgumentError("filter has_id must be a list of ids");
          for (const json& e : v) {
            if (!e.is_string()) return absl::InvalidArgumentError("filter has_id ids must be strings");
            x.ids.push_back(e.get<std::string>());
          }
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              "unknown filter condition key '", key.substr(0, 64),
              "'; known: field, match, in, range, has_id"));
        }
      }
      if (tests != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a filter condition needs exactly one of match, in, range or has_id; the one on '",
            x.field.substr(0, 64), "' has ", tests));
      }
      list->push_back(std::move(x));
    }
  }
  return absl::OkStatus();
}

// Parses a JSON body into `q`; the views in `q` point into `vector`, `bytes`
// and `filter`, which the caller keeps alive.
absl::Status QueryFromJson(const std::string& body, Query* q, std::vector<float>* vector,
                           std::string* bytes, serving::Filter* filter) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("request body is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("request body must be a JSON object");
  int kinds = 0;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "text" || key == "id" || key == "image_b64") {
      ++kinds;
      if (!v.is_string()) return absl::InvalidArgumentError(absl::StrCat(key, " must be a string"));
      *bytes = v.get<std::string>();
      if (key == "image_b64") {
        std::string decoded;
        if (!absl::Base64Unescape(*bytes, &decoded)) {
          return absl::InvalidArgumentError("image_b64 is not valid base64");
        }
        *bytes = std::move(decoded);
      }
      q->kind = key == "text" ? Query::Kind::kText
                : key == "id" ? Query::Kind::kId
                              : Query::Kind::kImage;
      if (q->kind == Query::Kind::kId) {
        q->id = *bytes;
      } else {
        q->data = *bytes;
      }
    } else if (key == "vector") {
      ++kinds;
      if (!v.is_array()) return absl::InvalidArgumentError("vector must be an array of numbers");
      vector->reserve(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number()) {
          return absl::InvalidArgumentError(absl::StrCat("vector[", i, "] is not a number"));
        }
        vector->push_back(v[i].get<float>());
      }
      q->kind = Query::Kind::kVector;
      q->vector = *vector;
    } else if (key == "top_k" || key == "ef") {
      auto n = JsonUint32(v, key.c_str());
      if (!n.ok()) return n.status();
      (key == "top_k" ? q->params.top_k : q->params.ef) = *n;
    } else if (key == "include_self") {
      if (!v.is_boolean()) return absl::InvalidArgumentError("include_self must be true or false");
      q->include_self = v.get<bool>();
    } else if (key == "dedup") {
      if (!v.is_number()) return absl::InvalidArgumentError("dedup must be a number from 0 to 1");
      q->params.dedup = v.get<float>();
    } else if (key == "filter") {
      if (absl::Status s = FilterFromJson(v, filter); !s.ok()) return s;
      q->filter = filter;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field '", key.substr(0, 64),
                       "'; known: text, vector, id, image_b64, top_k, ef, include_self, filter, dedup"));
    }
  }
  if (kinds > 1) {
    return absl::InvalidArgumentError("set only one of text, vector, id or image_b64");
  }
  return absl::OkStatus();
}

json HitsJson(const serving::SearchResult& r) {
  json hits = json::array();
  for (const auto& h : r.hits) {
    json attributes = h.attributes_json.empty()
                          ? json::object()
                          : json::parse(h.attributes_json, nullptr, /*allow_exceptions=*/false);
    if (attributes.is_discarded()) attributes = nullptr;
    hits.push_back({{"id", h.id},
                    {"score", h.score},
                    {"distance", h.distance},
                    {"uri", h.uri},
                    {"attributes", std::move(attributes)}});
  }
  return {{"hits", std::move(hits)}, {"snapshot_version", r.snapshot_version},
          {"collapsed", r.collapsed}};
}

json FieldsJson(const snapshot::AttributeTable* attrs) {
  json fields = json::array();
  if (attrs != nullptr) {
    for (const auto& f : attrs->fields()) {
      fields.push_back({{"name", f.name}, {"type", std::string(snapshot::FieldTypeName(f.type))}});
    }
  }
  return fields;
}

// The same fields, under the same names, as gRPC GetInfo.
json InfoJson(const serving::ServingState& state) {
  const auto& m = state.snapshot->manifest();
  return {{"snapshot_version", m.version},
          {"model",
           {{"name", m.model.name},
            {"version", m.model.version},
            {"sha256", m.model.sha256},
            {"embed_dim", m.dim},
            {"image_size", m.model.image_size},
            {"has_text", m.model.has_text},
            {"loaded", state.embedder != nullptr}}},
          {"dim", m.dim},
          {"metric", std::string(index::MetricName(m.metric))},
          {"vector_count", m.count},
          {"hnsw",
           {{"m", m.hnsw_m}, {"ef_construction", m.hnsw_ef_construction},
            {"default_ef", m.default_ef}}},
          {"created_at", m.created_at},
          {"base_version", m.base_version},
          {"max_top_k", serving::kMaxTopK},
          {"has_thumbnails", state.snapshot->thumbs() != nullptr},
          {"fields", FieldsJson(state.snapshot->attributes())}};
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

// Open without a token: the orchestrator's health check (SageMaker, k8s).
bool IsPing(const HttpRequest& req) {
  return (req.method == "GET" || req.method == "HEAD") && req.path == "/ping";
}

absl::Status Unauthenticated() {
  return absl::UnauthenticatedError(
      "missing or invalid bearer token: send the header 'Authorization: Bearer <token>'");
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
  bool open;       // Served without the bearer token.
  bool on_worker;  // Runs on a worker: it parses bodies, searches or reads the snapshot.
  Handler handler;
};

const std::vector<HttpFrontend::Route>& HttpFrontend::Routes() {
  static const std::vector<Route> routes = {
      {"GET", "/ping", false, true, false, &HttpFrontend::Ping},
      {"GET", "/metrics", false, false, false, &HttpFrontend::MetricsText},
      {"GET", "/", false, false, false, &HttpFrontend::Page},
      {"GET", "/info", false, false, false, &HttpFrontend::Info},
      {"GET", "/thumbs/", true, false, true, &HttpFrontend::Thumbnail},
      {"GET", "/invocations", false, false, false, &HttpFrontend::InvocationsGet},
      {"POST", "/invocations", false, false, true, &HttpFrontend::Invocations},
  };
  return routes;
}

HttpFrontend::HttpFrontend(serving::QueryCore* core, serving::Metrics* metrics,
                           HttpFrontendOptions options)
    : core_(core), metrics_(metrics), options_(std::move(options)) {}

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
      [](int status, absl::string_view message) {
        const absl::Status s = status == 408                    ? absl::DeadlineExceededError(message)
                               : status == 501 || status == 505 ? absl::UnimplementedError(message)
                                                                : absl::InvalidArgumentError(message);
        return ErrorResponse(s, status);
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

bool HttpFrontend::Authorized(const HttpRequest& req) const {
  return options_.token == nullptr || IsPing(req) ||
         options_.token->Accepts(req.Header("authorization"));
}

HttpResponse HttpFrontend::Refuse(const absl::Status& status, int http_status) {
  metrics_->RecordRequest("http", "Search", status.code(), absl::ZeroDuration());
  return ErrorResponse(status, http_status);
}

// Before the body: the token, and the body's announced size.
std::optional<HttpResponse> HttpFrontend::CheckHead(const HttpRequest& req) {
  const bool search = req.path == "/invocations";
  if (!Authorized(req)) {
    HttpResponse r =
        search ? Refuse(Unauthenticated(), 401) : ErrorResponse(Unauthenticated(), 401);
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"imagesearch\"");
    return r;
  }
  if (req.body_too_large) return Refuse(TooLarge(req, options_.max_body_bytes), 413);
  return std::nullopt;
}

void HttpFrontend::Dispatch(HttpRequest req, HttpResponder respond) {
  if (req.body_too_large) {  // A chunked body that outgrew the limit.
    return respond.Send(Refuse(TooLarge(req, options_.max_body_bytes), 413));
  }
  const Route* route = nullptr;
  for (const Route& r : Routes()) {
    const bool method = req.method == r.method || (req.method == "HEAD" && r.method[0] == 'G');
    const bool path = r.prefix
                          ? absl::StartsWith(req.path, r.path) && req.path.size() > strlen(r.path)
                          : req.path == r.path;
    if (method && path) {
      route = &r;
      break;
    }
  }
  if (route == nullptr) {
    return respond.Send(ErrorResponse(absl::NotFoundError(
        absl::StrCat("no route ", req.method.substr(0, 16), " ", req.path.substr(0, 200),
                     "; routes: GET /, GET /ping, GET /info, POST /invocations, "
                     "GET /thumbs/{id}, GET /metrics"))));
  }
  if (!route->on_worker) return (this->*route->handler)(std::move(req), std::move(respond));
  const size_t queued = options_.max_queued;
  if (!Enqueue([this, handler = route->handler, req = std::move(req), respond]() mutable {
        (this->*handler)(std::move(req), std::move(respond));
      })) {
    respond.Send(Refuse(
        absl::ResourceExhaustedError(absl::StrCat(
            "server overloaded: ", queued, " HTTP requests are waiting for a worker; retry later")),
        429));
  }
}

void HttpFrontend::Ping(HttpRequest, HttpResponder respond) {
  HttpResponse r;
  r.status = core_->Serving() ? 200 : 503;
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
  auto state = core_->Info(HttpContext(req, options_.timeout));
  if (!state.ok()) return respond.Send(ErrorResponse(state.status()));
  respond.Send(Content(InfoJson(**state).dump(), kJson));
}

// Thumbnails come only from the live snapshot's thumbs.bin, looked up by
// id: nothing in the request names a file.
void HttpFrontend::Thumbnail(HttpRequest req, HttpResponder respond) {
  const std::string id = req.path.substr(strlen("/thumbs/"));
  auto thumb = core_->Thumbnail(id, HttpContext(req, options_.timeout));
  if (!thumb.ok()) return respond.Send(ErrorResponse(thumb.status()));
  // Content-addressed: the same picture keeps its ETag across versions.
  const std::string etag = absl::StrCat("\"", Xxh3Hex(thumb->bytes), "\"");
  HttpResponse r;
  r.headers = {{"ETag", etag},
               {"Cache-Control", "public, max-age=300"},
               {"X-Content-Type-Options", "nosniff"}};
  if (req.Header("if-none-match") == etag) {
    r.status = 304;
  } else {
    r.body = std::string(thumb->bytes);
    r.content_type = thumb->media_type;
  }
  respond.Send(std::move(r));
}

void HttpFrontend::InvocationsGet(HttpRequest, HttpResponder respond) {
  respond.Send(ErrorResponse(absl::UnimplementedError("use POST /invocations"), 405));
}

// On a worker: parses the query and starts it through the core; the core's
// callback answers (here for refusals and vector/id queries, on a model
// thread for image and text queries).
void HttpFrontend::Invocations(HttpRequest req, HttpResponder respond) {
  // What the query's views point into, kept until the callback runs.
  struct Call {
    HttpRequest req;
    Query q;
    std::vector<float> vector;
    std::string bytes;
    serving::Filter filter;
  };
  auto call = std::make_shared<Call>();
  call->req = std::move(req);
  Query& q = call->q;
  absl::Duration timeout = options_.timeout;
  if (absl::Status s = ApplyParams(call->req, &q, &timeout); !s.ok()) {
    return respond.Send(Refuse(s));
  }
  const std::string type = MediaType(call->req);
  if (IsImageType(type)) {
    q.kind = Query::Kind::kImage;
    q.data = call->req.body;
  } else if (type == kJson) {
    if (absl::Status s =
            QueryFromJson(call->req.body, &q, &call->vector, &call->bytes, &call->filter);
        !s.ok()) {
      return respond.Send(Refuse(s));
    }
  } else {
    return respond.Send(Refuse(absl::InvalidArgumentError(absl::StrCat(
                                   "Content-Type '", type.substr(0, 64),
                                   "' is not supported; send image/jpeg, image/png, image/webp "
                                   "or application/json")),
                               415));
  }
  core_->Search(q, HttpContext(call->req, timeout),
                [call, respond](absl::StatusOr<serving::SearchResult> r) mutable {
                  if (!r.ok()) return respond.Send(ErrorResponse(r.status()));
                  // Ids and URIs are bytes from the snapshot, not necessarily UTF-8.
                  respond.Send(Content(
                      HitsJson(*r).dump(-1, ' ', false, json::error_handler_t::replace), kJson));
                });
}

}  // namespace imagesearch
