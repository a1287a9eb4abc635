// Package wal is a write-ahead log: entries addressed by a contiguous
// uint64 index, appended in batches that each cost one fdatasync.
//
// # Files
//
// A log is one directory of segment files, each named by the index of its
// first entry ("00000000000000000001.wal"), and at most one side file,
// "first", holding the logical first index TruncateFront set (8 bytes and
// a CRC-32C, replaced atomically). A segment is a run of records
//
//	crc(4) | len(4) | index(8) | data(len)
//
// (little-endian; the CRC-32C covers len, index and data; the top bit of
// len marks the first record of an Append). An Append writes its records
// in one write at the end of the last segment, then fdatasyncs that file;
// when the last segment has reached Options.SegmentBytes it first creates
// the next one (and fsyncs the directory). An Append is never split
// across segments.
//
// # What a write costs on disk
//
// Appending n entries of d bytes writes n*(16+d) bytes in place at the
// end of the records, and one fdatasync. Nothing already written is
// written again, except that the filesystem writes back the partly filled
// page at the tail each time (a 4 KiB page on ext4 or f2fs: small Appends
// rewrite that page until it fills). The open segment is preallocated to
// SegmentBytes as it begins (fallocate), so Appends write inside the
// file's size into blocks it has: a sync commits no new size, only the
// conversion of the blocks it reached from unwritten to written, and on
// ext4 a 700-byte Append's sync writes 4.9-5.6 KB to the disk instead of
// 8.9 KB (the page and fewer journal blocks). Where the filesystem cannot
// preallocate (UBIFS, JFFS2) the file grows with each Append, and each
// sync also commits its new size. A new segment costs a create, the
// preallocation and a directory fsync every SegmentBytes. Close gives the
// space no Append reached back (ftruncate); a crash leaves it. TruncateFront writes the side file
// (a write, two fsyncs) and unlinks whole segments; TruncateBack cuts one
// file (ftruncate and fdatasync) and unlinks the segments after it.
//
// # Memory
//
// The log keeps, per segment, an open file and an index of record offsets:
// every offset (8 bytes per entry) for the last segment, every 16th
// (0.5 byte per entry) for the others, so a Get in an older segment reads
// up to 15 headers before the record. Entries are never cached. Open reads
// every segment once to check it (the whole log passes through a 64 KiB
// buffer).
//
// # Recovery
//
// Open checks every record's CRC and index. Zeros from a record's place
// to the end of the file are preallocated space no Append reached (a
// zero header never decodes: its CRC is not zero): the records end there,
// in any segment (a gap they hid shows as the next segment's first index).
// Otherwise a record that does not decode
// at the tail of the last segment, with no whole record after it that
// begins a later Append, is what a crash leaves of an Append that never
// returned: the file is cut there (logged). Records of that same Append
// after the damaged one may be whole (pages reach the disk in any order)
// and go with it. Anything else (a damaged record followed by a later
// Append's records, damage in an earlier segment, a gap in indexes) is
// ErrCorrupt, naming the file and offset; nothing is dropped silently.
//
// OpenReadOnly reads a log as Open would recover it without changing
// anything in its directory (for a check of a stopped relay's data dir):
// a torn tail is left in place and reported, and damage Open would refuse
// is reported with the records before it served.
//
// # Concurrency
//
// One writer at a time (Append, TruncateFront, TruncateBack, Close:
// they serialize on a mutex); Get, Range, FirstIndex and LastIndex run
// concurrently with the writer and each other. An Append's entries become
// visible to readers once they are durable.
package wal
