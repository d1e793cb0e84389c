// deletes.<segment>.bin: the rows of one segment that a version no longer
// serves (deleted, or replaced by a newer row of the same id). Segments are
// immutable; a delete only ever writes a new deletes file into the new
// version, which is small (one bit per row) and read whole at open. Layout
// (little-endian):
//
//   0   char[8]       magic "ISDEL\0\0\1"
//   8   u64           rows N (the segment's rows)
//   16  u64           deleted rows D (the set bits)
//   24  u64[(N+63)/64] bitmap: bit r of word r/64 set = row r deleted
//
// Decoding checks the magic, the size for N, that no bit past N is set and
// that D bits are set, so a damaged file is DATA_LOSS, never a wrong answer.
#ifndef IMAGESEARCH_LIBS_SNAPSHOT_DELETES_H_
#define IMAGESEARCH_LIBS_SNAPSHOT_DELETES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "libs/index/row_filter.h"

namespace imagesearch::snapshot {

// The version file of a segment's deletes: "deletes.<segment>.bin".
std::string DeletesFileName(absl::string_view segment);

// `deleted` allows (holds) exactly the deleted rows of a segment of
// deleted.rows() rows.
std::string EncodeDeletes(const index::RowFilter& deleted);

// The deleted rows of a segment of `rows` rows. DATA_LOSS names what is
// wrong.
absl::StatusOr<index::RowFilter> DecodeDeletes(absl::string_view bytes, uint64_t rows);

}  // namespace imagesearch::snapshot

#endif  // IMAGESEARCH_LIBS_SNAPSHOT_DELETES_H_
