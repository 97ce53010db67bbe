// Blocks of words transposed in registers (16 x 16 of 32 bits, 8 x 8 of 64 bits),
// shared by the AVX-512 BF16 large-M paths and the 2:4 lanes kernel. Included inside
// each kernel file's anonymous namespace, after its target pragma.

// r[j] lane i <- r[i] lane j: a 16 x 16 block of 32-bit words transposed in registers.
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {  // lane L: words 4L.. of rows i, i + 1 interleaved
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // r[i + c]: lane L holds word 4L + c of rows i .. i + 3
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int h = 0; h < 2; h++)  // gather the 128-bit lanes: rows 0-7, then 8-15
        for (int c = 0; c < 4; c++) {
            t[8 * h + c] = _mm512_shuffle_i32x4(r[8 * h + c], r[8 * h + 4 + c], 0x88);
            t[8 * h + 4 + c] = _mm512_shuffle_i32x4(r[8 * h + c], r[8 * h + 4 + c], 0xdd);
        }
    for (int c = 0; c < 8; c++) {
        r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xdd);
    }
}

// r[q] <- qword q of rows 0..7: an 8 x 8 block of 64-bit words transposed in registers.
inline void transpose8x8_epi64(__m512i r[8]) {
    __m512i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm512_unpacklo_epi64(r[i], r[i + 1]);      // qwords 0 2 4 6 of rows i, i + 1
        a[i + 1] = _mm512_unpackhi_epi64(r[i], r[i + 1]);  // qwords 1 3 5 7
    }
    const __m512i even = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i odd = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int h = 0; h < 8; h += 4)  // b[h + c]: qwords c and c + 4 of rows h .. h + 3
        for (int c = 0; c < 2; c++) {
            b[h + c] = _mm512_permutex2var_epi64(a[h + c], even, a[h + 2 + c]);
            b[h + 2 + c] = _mm512_permutex2var_epi64(a[h + c], odd, a[h + 2 + c]);
        }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_shuffle_i64x2(b[c], b[4 + c], 0x44);
        r[c + 4] = _mm512_shuffle_i64x2(b[c], b[4 + c], 0xee);
    }
}
