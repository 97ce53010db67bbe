// Software prefetch for the weight streams. Each kernel keeps several rows in
// flight, each a separate stream; measured on a 2-core EPYC, asking for the values
// 512 bytes ahead of each row's pointer (and its bitmap every 16 words) moved decode
// from ~25 to ~30 GB/s at M = 1 and cut the M = 8 time by about a quarter: the
// hardware prefetcher alone falls behind once the core is busy multiplying.
// Included inside each ISA file's anonymous namespace, after its target pragma.
static inline void prefetch_ahead(const void* values, const uint32_t* bits, int64_t word) {
    _mm_prefetch((const char*)values + 512, _MM_HINT_T0);
    if ((word & 15) == 0) _mm_prefetch((const char*)(bits + word) + 256, _MM_HINT_T0);
}

// A contiguous region brought into L2 a few lines per step, so that it is spread over
// `steps` steps of the work before it: a decode kernel walks the next block of rows
// (its values and its bitmap rows, each contiguous) while it multiplies this one.
// Each block of rows starts 2 x rows streams at once; without this they all began
// cold, and on a 2-core EPYC decode of 16384 x 2048 at 70% read 25 GB/s; with it 45
// (median of calls over > 96 MB of copies; 4096 x 14336, whose rows are long, 45 -> 46).
struct RegionPrefetch {
    const char* next;
    const char* end;
    int64_t step;
    RegionPrefetch(const void* begin, const void* stop, int64_t steps)
        : next((const char*)begin), end((const char*)stop) {
        const int64_t bytes = end > next ? end - next : 0;
        step = steps > 0 ? ((bytes / steps + 63) & ~(int64_t)63) : bytes;
    }
    void advance() {
        for (int64_t done = 0; done < step && next < end; done += 64, next += 64) _mm_prefetch(next, _MM_HINT_T1);
    }
};
