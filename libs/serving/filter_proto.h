// The API's Filter message (proto/imagesearch/v1) as a serving::Filter, for
// every front end that takes one: the query service's gRPC Search and the
// ingest service's Delete. A separate target, so that imagesearch::serving
// stays free of the generated code.
#ifndef IMAGESEARCH_LIBS_SERVING_FILTER_PROTO_H_
#define IMAGESEARCH_LIBS_SERVING_FILTER_PROTO_H_

#include "imagesearch/v1/imagesearch.pb.h"
#include "libs/serving/filter.h"

namespace imagesearch::serving {

// Appends `in`'s conditions to `out`. What cannot be converted (a value or a
// condition with nothing set) is described in out->error, which callers
// answer with INVALID_ARGUMENT.
void FilterFromProto(const v1::Filter& in, Filter* out);

}  // namespace imagesearch::serving

#endif  // IMAGESEARCH_LIBS_SERVING_FILTER_PROTO_H_
