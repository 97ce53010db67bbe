// Reading the blocked 2:4 layout (spmm.h: blocks of 8 rows, one 576-byte record per
// 64 columns), shared by its AVX-512 and AVX2 kernels. Included inside each kernel
// file's anonymous namespace, after its target pragma, so every file keeps its own
// copy compiled for its own instruction set.

const int kRows = VS_NM24_BLOCK_ROWS;
const int kRecord = VS_NM24_RECORD_BYTES;
// Measured: asking for the record 2 KiB ahead of the one being read (three lines of
// it; the hardware prefetcher fetches the rest) beat 512 B and 4 KiB at M = 1.
const int kAhead = 2048;

inline const uint8_t* block_records(const VsNM24Weight* w, int64_t block) {
    return w->blocks + block * (w->k / 64) * kRecord;
}

inline void prefetch_ahead(const uint8_t* record) {
    _mm_prefetch((const char*)record + kAhead, _MM_HINT_T0);
    _mm_prefetch((const char*)record + kAhead + 192, _MM_HINT_T0);
    _mm_prefetch((const char*)record + kAhead + 384, _MM_HINT_T0);
}

// The whole record `records` records ahead (nine lines): for the kernels that spend
// long enough on a record that three lines 2 KiB ahead leave them waiting on the rest.
inline void prefetch_record(const uint8_t* record, int records) {
    for (int line = 0; line < kRecord; line += 64)
        _mm_prefetch((const char*)record + records * kRecord + line, _MM_HINT_T0);
}

// A whole record into L2 (for the next block, while this one is read).
inline void prefetch_record_to_l2(const uint8_t* record) {
    for (int line = 0; line < kRecord; line += 64) _mm_prefetch((const char*)record + line, _MM_HINT_T1);
}

// Calls visit(c) for each of a block's `chunks` records, reading them as `Streams`
// streams at once: the columns in `Streams` parts, a record of each part in turn, then
// what the parts leave over. One stream per thread leaves memory idle at decode (the
// kernels say what they measured).
template <int Streams, class Visit>
inline void visit_records(int chunks, const Visit& visit) {
    const int part = chunks / Streams;
    for (int c = 0; c < part; c++)
        for (int s = 0; s < Streams; s++) visit(s * part + c);
    for (int c = Streams * part; c < chunks; c++) visit(c);
}

inline uint64_t record_selectors(const uint8_t* record, int row) { return ((const uint64_t*)record)[row]; }

inline const uint16_t* record_values(const uint8_t* record, int row) {
    return (const uint16_t*)(record + 64) + row * 32;
}

// Where a record row's 32 values go among its 64 columns, as a mask: each byte of
// the selector word holds the four selectors of two groups, and a 256-entry table
// turns it into the 8-column mask of those groups.
inline uint64_t selector_mask(uint64_t selectors) {
    static const struct Table {
        uint8_t mask[256];
        Table() {
            for (int b = 0; b < 256; b++)
                mask[b] = (uint8_t)((1 << (b & 3)) | (1 << ((b >> 2) & 3)) | (16 << ((b >> 4) & 3)) | (16 << (b >> 6)));
        }
    } table;
    uint64_t mask = 0;
    for (int j = 0; j < 8; j++) mask |= (uint64_t)table.mask[(selectors >> (8 * j)) & 0xff] << (8 * j);
    return mask;
}

// Dense rows [row_begin, row_end) into dst [row_end - row_begin, k]: place(selectors,
// values, out) writes one row's 64 columns of one record.
template <class Place>
void unpack_rows(const VsNM24Weight* w, int64_t row_begin, int64_t row_end, uint16_t* dst, const Place& place) {
    const int64_t chunks = w->k / 64;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t* record = block_records(w, r / kRows);
        const int row = (int)(r % kRows);
        for (int64_t c = 0; c < chunks; c++, record += kRecord)
            place(record_selectors(record, row), record_values(record, row), dst + (r - row_begin) * w->k + c * 64);
    }
}
