// Grammar-constrained temperature / top-k / top-p sampling: the CUDA C++ twin of
// kernels/constrained_sample.py (seedfast.kernels.constrained_sample), with the same two
// samplers: the split two-pass sampler (method 0, the default) and the one-block-per-row pivot
// sampler (method 1, "rows"), which is also the split sampler's exact fallback.
//
// Pure CUDA + CUB, no torch headers: the C entry point seedfast_constrained_sample() takes raw
// device pointers, sizes, strides, a caller-allocated workspace (sized by
// seedfast_constrained_sample_workspace()) and a stream, so CI compiles this file with nvcc alone
// and the torch binding (constrained_sample_binding.cpp) stays a thin shim.
//
// A row is read as its "virtual row": the contiguous id range its grammar state allows (text ids,
// or the codes) followed, for text rows, by the <img> logit, which lies above every text id, so
// the virtual order is the id order. Forced </img> rows read nothing.
//
// The split sampler (five launches, no host synchronisation, shapes fixed by B and V, so CUDA-graph
// capturable) mirrors _launch_split kernel by kernel. Tiles of block_v = 256 positions start on the
// 16-byte boundary at or below the row's first id and are read in 16-byte vector loads (masked per
// 16-byte run); a warp takes a tile, and a row's tiles are spread over up to one warp each at small
// batches (blocks of kPassWarps warps, ~1000 warps in all). The tile is the unit of every float sum
// and the histograms are integers, so the tokens do not depend on how many blocks share a row.
//   1. split_tiles_kernel (_split_tiles_kernel), per tile: max, first argmax,
//      sum exp((x - tile max)/t), finite count, NaN/+inf bit; for rows with top-k or top-p every
//      finite token also goes into the row's histogram over kNumBuckets value buckets (2^5 per
//      binade of |x| in [2^-20, 2^12), plus a tiny and a huge bucket per sign) by integer atomics:
//      a count, and exp((x - upper edge)/t) in fixed point (2^-43), exact in any order;
//   2. split_select_kernel (_split_select_kernel), per row (one warp): the tiles merged in tile
//      order (max, first argmax, Z); greedy, error and forced rows finish here; filtered rows walk
//      the histogram from the top to top-k's bucket (the first whose cumulative count reaches k)
//      and top-p's (the last non-empty one whose mass above is below top_p * Z, or top_p times
//      the mass above k's bucket with top-k); the buckets [c_lo, c_hi] between hold the candidates;
//   3. split_collect_kernel (_split_collect_kernel), per tile: the weight of the tokens above c_lo
//      (all kept), and the tokens inside [c_lo, c_hi] appended to the row's candidates;
//   4. split_finish_kernel (_split_finish_kernel), per row (four warps): the candidates sorted by
//      (logit descending, id) with a CUB radix sort; the exact top-k cut (the k-th largest logit)
//      and top-p cut (the last tie group whose strictly larger top-k tokens weigh less than top_p
//      times the top-k total); the kept weight per tile (pass 2's sum plus the kept candidates',
//      added in fixed point) locates the tile where u times the total falls; the inverse CDF in id
//      order runs inside that one tile;
//   5. rows whose candidate buckets hold more than kSplitCap tokens, or top-p rows whose buckets
//      are too wide for the temperature (width/t > 20 in log2 units), are marked kModeFallback and
//      sampled by constrained_sample_kernel, which every other row leaves at once.
// Float arithmetic follows the PTX Triton emits for those kernels (div.full.f32 for 1/t,
// ex2.approx.ftz.f32, its register layouts and reduction / scan orders; see the split section), so
// that both backends keep the same tokens and add the sums that place u in the same order.
//
// The pivot sampler (constrained_sample_kernel, one 256-thread block per row; the stats and pivot
// sweeps read 16-byte vectors and reduce their structs with register shuffles, the rest use CUB):
//   1. stats: max and first argmax (greedy), min finite logit, finite count, NaN/+inf flag;
//   2. bracket: counts of tokens at or above kPivots logit pivots m - t*2^(i-3) (and the
//      normaliser Z for rows without top-k); the highest pivot that satisfies the filters' need
//      (count >= k; or, for top-p alone, a lower bound of the mass above it >= top_p*Z) becomes
//      the cut; up to kMaxRefine more passes split the bracket while more than kCap tokens lie
//      above the cut;
//   3. extract: the tokens above the cut, compacted in id order into shared memory;
//   4. exact top-k (rank = number of strictly larger logits) and top-p (mass of strictly larger
//      top-k tokens < top_p * Z_k, the most probable always kept) on the candidates, then
//      inverse-CDF sampling in id order with the shared counter-based uniform.
// Rows with more than kCap candidates (or a top-p cut that fails its check) take an exact
// (kPivots+1)-ary search over the monotone integer keys of the fp32 logits, then a scan.
// Rows whose allowed logits hold NaN/+inf, or no finite value, emit eos and a flag.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <algorithm>
#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

namespace seedfast_sample {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kCap = kThreads;  // one candidate per thread in the exact stage
constexpr int kPivots = 8;
constexpr int kMaxRefine = 3;
constexpr int kFlagNonFinite = 1;
constexpr int kFlagNothingAllowed = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = __builtin_huge_valf();

// The split sampler's constants (kernels/constrained_sample.py: MANT_BITS, EXP_LO, NUM_EXP,
// NUM_BUCKETS, FIX, MAX_WIDTH_LOG2, ROW_INTS, ROW_FLOATS, MODE_*, BAD_BIT, BIG).
constexpr int kMantBits = 5;
constexpr int kExpLo = 107;
constexpr int kNumExp = 32;
constexpr int kHalfBuckets = (kNumExp << kMantBits) + 2;
constexpr int kNumBuckets = 2 * kHalfBuckets;
constexpr float kFix = 8796093022208.0f;             // 2^43
constexpr float kInvFix = 1.0f / 8796093022208.0f;   // 2^-43, exact
constexpr float kMaxWidthLog2 = 20.0f;
constexpr int kRowInts = 8;
constexpr int kRowFloats = 4;
constexpr int kModeDone = 0;
constexpr int kModeSample = 1;
constexpr int kModeFallback = 2;
constexpr int kBadBit = 1 << 30;
constexpr int kBig = 1 << 30;

struct Params {
  const void* logits;
  const void* image_pos;
  const float* temperature;
  const int64_t* top_k;
  const float* top_p;
  const int64_t* seed;
  const int64_t* offset;
  const int64_t* stream;
  int64_t* tokens;
  int32_t* next_pos;
  int32_t* flags;
  int64_t stride_row, s_temp, s_topk, s_topp, s_seed, s_off, s_stream;
  int text_vocab, first_code, num_codes, boi_id, eoi_id, eos_id;
  int64_t codes_per_image;
  bool pos_is_int64;
  // The split sampler's per-row state (ROW_INTS ints per row, the mode first): when set, the
  // one-block-per-row kernel samples only the rows marked kModeFallback and leaves the others
  // (ONLY_FALLBACK of _constrained_sample_kernel). nullptr: every row (method "rows").
  const int32_t* modes;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// The counter-based uniform of seedfast.ops.constrained_sample.row_uniform, bit for bit.
__device__ __forceinline__ uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

__device__ __forceinline__ float row_uniform(int64_t seed, int64_t offset, int64_t row) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  uint32_t h = hash32(static_cast<uint32_t>(row) + 0x9E3779B9u);
  h = hash32(h ^ static_cast<uint32_t>(o));
  h = hash32(h ^ static_cast<uint32_t>(o >> 32));
  h = hash32(h ^ static_cast<uint32_t>(s));
  h = hash32(h ^ static_cast<uint32_t>(s >> 32));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// Monotone integer key of a float (-0.0 and +0.0 share key 0) and its inverse.
__device__ __forceinline__ int32_t float_key(float x) {
  if (x == 0.0f) return 0;
  const int32_t bits = __float_as_int(x);
  return bits ^ ((bits >> 31) & 0x7FFFFFFF);
}

__device__ __forceinline__ float key_float(int64_t key) {
  const int32_t k = static_cast<int32_t>(key);
  return __int_as_float(k >= 0 ? k : (k ^ 0x7FFFFFFF));
}

__device__ __forceinline__ bool is_live(float x) { return x > -kInf && x < kInf; }

template <typename T>
struct VirtualRow {
  const T* base;  // logits of the first allowed id
  int length;     // contiguous allowed ids
  int n;          // length, plus one for <img> in text rows
  int lo_id, boi_id;
  float boi_x;
  __device__ __forceinline__ float at(int j) const { return j < length ? to_float(base[j]) : boi_x; }
  __device__ __forceinline__ int id(int j) const { return j < length ? lo_id + j : boi_id; }
};

// The logits of one 16-byte vector as floats.
__device__ __forceinline__ void unpack(const uint4& v, float (&out)[4]) {
  out[0] = __uint_as_float(v.x);
  out[1] = __uint_as_float(v.y);
  out[2] = __uint_as_float(v.z);
  out[3] = __uint_as_float(v.w);
}

__device__ __forceinline__ float half_bits_to_float(unsigned short bits, __half) {
  return __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ float half_bits_to_float(unsigned short bits, __nv_bfloat16) {
  return __bfloat162float(__ushort_as_bfloat16(bits));
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float (&out)[8]) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = half_bits_to_float(static_cast<unsigned short>(words[i] & 0xFFFFu), T());
    out[2 * i + 1] = half_bits_to_float(static_cast<unsigned short>(words[i] >> 16), T());
  }
}

template <typename T>
__device__ __forceinline__ void unpack_vector(const uint4& v, float (&out)[16 / sizeof(T)]) {
  if constexpr (sizeof(T) == 4) {
    unpack(v, out);
  } else {
    unpack<T>(v, out);
  }
}

// Calls f(j, x) for the virtual positions j of the row that this thread owns, in increasing
// order: the contiguous ids are read in 16-byte vectors from the 16-byte boundary at or below the
// row's first id (the elements beside the row in its first and last blocks are skipped; they
// lie in the same 16-byte blocks as row elements, so reading them never faults); thread 0 also
// takes <img>, the last virtual position, after its ids.
template <typename T, typename F>
__device__ __forceinline__ void for_each_owned(const VirtualRow<T>& row, F&& f) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const int shift = static_cast<int>((reinterpret_cast<uintptr_t>(row.base) & 15u) / sizeof(T));
  const uint4* blocks = reinterpret_cast<const uint4*>(row.base - shift);
  const int span = shift + row.length;
  for (int c = threadIdx.x; c * kVec < span; c += kThreads) {
    float x[kVec];
    unpack_vector<T>(__ldg(blocks + c), x);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const int j = c * kVec + e - shift;
      if (j >= 0 && j < row.length) f(j, x[e]);
    }
  }
  if (threadIdx.x == 0 && row.n > row.length) f(row.length, row.boi_x);
}

struct Stats {
  float max;
  int arg;
  float min;
  int finite;
  int bad;
};

struct StatsOp {
  __device__ __forceinline__ Stats operator()(const Stats& a, const Stats& b) const {
    Stats r;
    const bool take_b = b.max > a.max || (b.max == a.max && b.arg < a.arg);
    r.max = take_b ? b.max : a.max;
    r.arg = take_b ? b.arg : a.arg;
    r.min = fminf(a.min, b.min);
    r.finite = a.finite + b.finite;
    r.bad = a.bad | b.bad;
    return r;
  }
};

struct PivotSums {
  int count[kPivots];
  float mass[kPivots];
  float z;
};

struct PivotSumsOp {
  __device__ __forceinline__ PivotSums operator()(const PivotSums& a, const PivotSums& b) const {
    PivotSums r;
#pragma unroll
    for (int i = 0; i < kPivots; ++i) {
      r.count[i] = a.count[i] + b.count[i];
      r.mass[i] = a.mass[i] + b.mass[i];
    }
    r.z = a.z + b.z;
    return r;
  }
};

struct SumOp {
  template <typename V>
  __device__ __forceinline__ V operator()(const V& a, const V& b) const { return a + b; }
};

struct MinOp {
  template <typename V>
  __device__ __forceinline__ V operator()(const V& a, const V& b) const { return b < a ? b : a; }
};

struct MaxOp {
  template <typename V>
  __device__ __forceinline__ V operator()(const V& a, const V& b) const { return a < b ? b : a; }
};

using ReduceFloat = cub::BlockReduce<float, kThreads>;
using ReduceInt = cub::BlockReduce<int, kThreads>;
using ScanFloat = cub::BlockScan<float, kThreads>;
using ScanInt = cub::BlockScan<int, kThreads>;

struct Shared {
  union {
    ReduceFloat::TempStorage f;
    ReduceInt::TempStorage i;
    ScanFloat::TempStorage scan_f;
    ScanInt::TempStorage scan_i;
  } tmp;
  union {
    float f;
    int i;
  } out;
  union {
    Stats stats[kWarps];
    PivotSums pivots[kWarps];
  } warp_out;
  float cand_x[kCap];
  float cand_w[kCap];
  int cand_id[kCap];
};

// Block-wide reductions whose result every thread receives (CUB leaves it in thread 0). The
// trailing barrier lets the next reduction reuse the same temporary storage.
template <typename V, typename Reduce, typename Op>
__device__ __forceinline__ V all_reduce(V value, typename Reduce::TempStorage& tmp, V& out, Op op) {
  const V r = Reduce(tmp).Reduce(value, op);
  if (threadIdx.x == 0) out = r;
  __syncthreads();
  const V all = out;
  __syncthreads();
  return all;
}

// Warp shuffles of the reduction structs, field by field: they stay in registers (CUB's
// shuffle of a struct goes through local memory).
__device__ __forceinline__ Stats shuffle_down(const Stats& s, int d) {
  Stats r;
  r.max = __shfl_down_sync(0xFFFFFFFFu, s.max, d);
  r.arg = __shfl_down_sync(0xFFFFFFFFu, s.arg, d);
  r.min = __shfl_down_sync(0xFFFFFFFFu, s.min, d);
  r.finite = __shfl_down_sync(0xFFFFFFFFu, s.finite, d);
  r.bad = __shfl_down_sync(0xFFFFFFFFu, s.bad, d);
  return r;
}

__device__ __forceinline__ PivotSums shuffle_down(const PivotSums& s, int d) {
  PivotSums r;
#pragma unroll
  for (int i = 0; i < kPivots; ++i) {
    r.count[i] = __shfl_down_sync(0xFFFFFFFFu, s.count[i], d);
    r.mass[i] = __shfl_down_sync(0xFFFFFFFFu, s.mass[i], d);
  }
  r.z = __shfl_down_sync(0xFFFFFFFFu, s.z, d);
  return r;
}

// Block-wide reduction of a struct whose result every thread receives: a shuffle tree per warp,
// then every thread combines the warps' results in the same order. The trailing barrier lets
// the next reduction reuse warp_out.
template <typename V, typename Op>
__device__ __forceinline__ V block_all_reduce(V value, V (&warp_out)[kWarps], Op op) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) value = op(value, shuffle_down(value, d));
  if ((threadIdx.x & 31) == 0) warp_out[threadIdx.x >> 5] = value;
  __syncthreads();
  V all = warp_out[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) all = op(all, warp_out[w]);
  __syncthreads();
  return all;
}

__device__ __forceinline__ float sum_f(float v, Shared& sh) {
  return all_reduce<float, ReduceFloat>(v, sh.tmp.f, sh.out.f, SumOp());
}
__device__ __forceinline__ float min_f(float v, Shared& sh) {
  return all_reduce<float, ReduceFloat>(v, sh.tmp.f, sh.out.f, MinOp());
}
__device__ __forceinline__ int sum_i(int v, Shared& sh) {
  return all_reduce<int, ReduceInt>(v, sh.tmp.i, sh.out.i, SumOp());
}
__device__ __forceinline__ int min_i(int v, Shared& sh) {
  return all_reduce<int, ReduceInt>(v, sh.tmp.i, sh.out.i, MinOp());
}
__device__ __forceinline__ int max_i(int v, Shared& sh) {
  return all_reduce<int, ReduceInt>(v, sh.tmp.i, sh.out.i, MaxOp());
}

// tl.exp2 and fp32 division as Triton lowers them (ex2.approx.ftz.f32, div.full.f32), so that both
// backends compute the same weights and the same 1/t.
__device__ __forceinline__ float exp2_ftz(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ float div_full(float a, float b) {
  float r;
  asm("div.full.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

__device__ __forceinline__ float weight(float x, float m, float scale) { return exp2_ftz((x - m) * scale); }

// One sweep: for each pivot, the count of finite tokens x >= px[i] (kCount) and their weight
// restricted to x >= floor_x (kMass); and Z, the weight of all finite tokens x >= floor_x (kZ).
template <bool kCount, bool kMass, bool kZ, typename T>
__device__ PivotSums pivot_pass(const VirtualRow<T>& row, const float (&px)[kPivots], float m, float scale,
                                float floor_x, Shared& sh) {
  PivotSums acc;
#pragma unroll
  for (int i = 0; i < kPivots; ++i) {
    acc.count[i] = 0;
    acc.mass[i] = 0.0f;
  }
  acc.z = 0.0f;
  for_each_owned(row, [&](int, float x) {
    if (!is_live(x)) return;
    float w = 0.0f;
    if (kMass || kZ) w = x >= floor_x ? weight(x, m, scale) : 0.0f;
    if (kZ) acc.z += w;
#pragma unroll
    for (int i = 0; i < kPivots; ++i) {
      const bool ge = x >= px[i];
      if (kCount) acc.count[i] += ge ? 1 : 0;
      if (kMass) acc.mass[i] += ge ? w : 0.0f;
    }
  });
  return block_all_reduce(acc, sh.warp_out.pivots, PivotSumsOp());
}

// Lower bound of the mass of tokens x >= px[i] (pivots descending): tokens between two pivots
// weigh at least the lower pivot's weight; lbm_hi bounds the mass above hi (count cnt_hi).
__device__ __forceinline__ void mass_lower_bound(const float (&px)[kPivots], const int (&cnt)[kPivots], float m,
                                                 float scale, int cnt_hi, float lbm_hi, float (&lb)[kPivots]) {
  float acc = lbm_hi;
  int prev = cnt_hi;
#pragma unroll
  for (int i = 0; i < kPivots; ++i) {
    acc += static_cast<float>(cnt[i] - prev) * weight(px[i], m, scale);
    prev = cnt[i];
    lb[i] = acc;
  }
}

struct Bracket {
  float lo, hi, lbm_hi;
  int cnt_lo, cnt_hi;
};

// Move the bracket to the highest pivot where the filters' need holds.
__device__ __forceinline__ void narrow(Bracket& br, const float (&px)[kPivots], const PivotSums& s, bool k_on,
                                       int64_t top_k, bool p_on, float top_p, float z_all, float m, float scale) {
  float lb[kPivots];
  mass_lower_bound(px, s.count, m, scale, br.cnt_hi, br.lbm_hi, lb);
  // The pivots descend with i: the first one where the need holds becomes lo and the one before
  // it hi (hi moves to the last pivot when none holds). Running values, never an index computed
  // at run time, so that the arrays stay in registers.
  bool found = false;
  float prev_px = 0.0f, prev_lb = 0.0f;
  int prev_cnt = 0;
#pragma unroll
  for (int i = 0; i < kPivots; ++i) {
    const bool cond = k_on ? s.count[i] >= top_k : (p_on && lb[i] * (1.0f - 1.0f / 1024.0f) >= top_p * z_all);
    if (cond && !found) {
      found = true;
      br.lo = px[i];
      br.cnt_lo = s.count[i];
      if (i > 0) {
        br.hi = prev_px;
        br.cnt_hi = prev_cnt;
        br.lbm_hi = prev_lb;
      }
    }
    prev_px = px[i];
    prev_cnt = s.count[i];
    prev_lb = lb[i];
  }
  if (!found) {
    br.hi = prev_px;
    br.cnt_hi = prev_cnt;
    br.lbm_hi = prev_lb;
  }
}

// Inverse CDF in id order over the finite tokens x >= thr: the first virtual position whose
// running weight exceeds target, or the last one with weight when rounding leaves target above.
template <typename T>
__device__ int scan_sample(const VirtualRow<T>& row, float m, float scale, float thr, float target, Shared& sh) {
  float carry = 0.0f;
  int last = -1;
  for (int j0 = 0; j0 < row.n; j0 += kThreads) {
    const int j = j0 + threadIdx.x;
    float w = 0.0f;
    if (j < row.n) {
      const float x = row.at(j);
      if (is_live(x) && x >= thr) w = weight(x, m, scale);
    }
    float cum, tile_sum;
    ScanFloat(sh.tmp.scan_f).InclusiveSum(w, cum, tile_sum);
    __syncthreads();
    const bool hit = w > 0.0f && carry + cum > target;
    const int first = min_i(hit ? j : INT_MAX, sh);
    if (first != INT_MAX) return first;
    last = max(last, max_i(w > 0.0f ? j : -1, sh));
    carry += tile_sum;
  }
  return max(last, 0);
}

// Two blocks per SM: ptxas may then use up to 128 registers per thread, which holds the pivot
// sums without local memory (left to its own heuristic it capped the fp32 variant at 80
// registers and spilled).
template <typename T>
__global__ void __launch_bounds__(kThreads, 2) constrained_sample_kernel(const Params p) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  // mirrors ONLY_FALLBACK of _constrained_sample_kernel: the rows the split sampler handed over.
  if (p.modes != nullptr && p.modes[b * kRowInts] != kModeFallback) return;
  const int64_t pos = p.pos_is_int64 ? static_cast<const int64_t*>(p.image_pos)[b]
                                     : static_cast<int64_t>(static_cast<const int32_t*>(p.image_pos)[b]);
  const bool in_text = pos < 0;
  int64_t token;
  int next = -1, flags = 0;

  if (pos >= p.codes_per_image) {
    // </img> is forced whatever the logits; nothing is read.
    if (tid == 0) {
      p.tokens[b] = p.eoi_id;
      p.next_pos[b] = -1;
      p.flags[b] = 0;
    }
    return;
  }

  const T* row_ptr = static_cast<const T*>(p.logits) + b * p.stride_row;
  VirtualRow<T> row;
  row.lo_id = in_text ? 0 : p.first_code;
  row.base = row_ptr + row.lo_id;
  row.length = in_text ? p.text_vocab : p.num_codes;
  row.n = row.length + (in_text ? 1 : 0);
  row.boi_id = p.boi_id;
  row.boi_x = in_text ? to_float(row_ptr[p.boi_id]) : 0.0f;

  const float temp = p.temperature[b * p.s_temp];
  const int64_t top_k = p.top_k[b * p.s_topk];
  const float top_p = p.top_p[b * p.s_topp];
  const float u = row_uniform(p.seed[b * p.s_seed], p.offset[b * p.s_off], p.stream[b * p.s_stream]);

  // ---- pass 1
  Stats st{-kInf, INT_MAX, kInf, 0, 0};
  for_each_owned(row, [&](int j, float x) {
    if (x != x || x == kInf) st.bad = 1;
    if (is_live(x)) {
      // Strictly greater: each thread sees its positions in increasing order and keeps its
      // earliest maximum; the reduction takes the lowest id.
      if (x > st.max) {
        st.max = x;
        st.arg = j;
      }
      st.min = fminf(st.min, x);
      st.finite += 1;
    }
  });
  st = block_all_reduce(st, sh.warp_out.stats, StatsOp());
  const float m = st.max;

  if (st.bad || st.finite == 0) {
    token = p.eos_id;
    flags = st.bad ? kFlagNonFinite : kFlagNothingAllowed;
  } else if (!(temp > 0.0f)) {
    token = row.id(st.arg);  // greedy (NaN temperatures too)
  } else {
    // 1/t saturates at FLT_MAX so that (m - m) * scale stays 0.
    const float scale = fminf(div_full(1.0f, temp) * kLog2e, FLT_MAX);
    const bool k_on = top_k > 0 && top_k < st.finite;
    const bool p_on = !(top_p >= 1.0f);
    const bool need_cand = k_on || p_on;
    float z_all = 0.0f;
    Bracket br{st.min, m, 0.0f, st.finite, 0};
    float px[kPivots];

    // ---- pass 2 (and Z for rows without top-k)
    if (need_cand) {
#pragma unroll
      for (int i = 0; i < kPivots; ++i) px[i] = m - temp * exp2f(static_cast<float>(i - 3));
      const PivotSums s = k_on ? pivot_pass<true, false, false>(row, px, m, scale, -kInf, sh)
                                : pivot_pass<true, false, true>(row, px, m, scale, -kInf, sh);
      z_all = s.z;
      narrow(br, px, s, k_on, top_k, p_on, top_p, z_all, m, scale);
      for (int it = 0; it < kMaxRefine && br.cnt_lo > kCap; ++it) {
#pragma unroll
        for (int i = 0; i < kPivots; ++i)
          px[i] = br.hi - (br.hi - br.lo) * (static_cast<float>(i + 1) / static_cast<float>(kPivots + 1));
        const PivotSums r = pivot_pass<true, false, false>(row, px, m, scale, -kInf, sh);
        narrow(br, px, r, k_on, top_k, p_on, top_p, z_all, m, scale);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kPivots; ++i) px[i] = kInf;
      z_all = pivot_pass<false, false, true>(row, px, m, scale, -kInf, sh).z;
    }

    bool cand = need_cand && br.cnt_lo <= kCap;
    bool fallback = need_cand && !cand;
    int64_t tok_cand = 0;

    // ---- extract the candidates x >= lo in id order, then the exact filters
    if (cand) {
      int n_cand = 0;
      for (int j0 = 0; j0 < row.n; j0 += kThreads) {
        const int j = j0 + tid;
        const float x = j < row.n ? row.at(j) : -kInf;
        const int take = (j < row.n && is_live(x) && x >= br.lo) ? 1 : 0;
        int slot, taken;
        ScanInt(sh.tmp.scan_i).ExclusiveSum(take, slot, taken);
        if (take && n_cand + slot < kCap) {
          sh.cand_x[n_cand + slot] = x;
          sh.cand_id[n_cand + slot] = row.id(j);
        }
        n_cand += taken;
        __syncthreads();
      }
      const bool mine = tid < n_cand;
      const float cx = mine ? sh.cand_x[tid] : -kInf;
      const float cw = mine ? weight(cx, m, scale) : 0.0f;
      sh.cand_w[tid] = cw;
      __syncthreads();
      int rank = 0;
      for (int j = 0; j < n_cand; ++j) rank += sh.cand_x[j] > cx ? 1 : 0;
      const bool keep_k = mine && (!k_on || rank < top_k);
      const float t_k = min_f(keep_k ? cx : kInf, sh);
      const float z_k = k_on ? sum_f(keep_k ? cw : 0.0f, sh) : z_all;
      bool keep = keep_k;
      if (p_on) {
        float mass_gt = 0.0f;
        for (int j = 0; j < n_cand; ++j) {
          const float xj = sh.cand_x[j];
          mass_gt += (xj > cx && xj >= t_k) ? sh.cand_w[j] : 0.0f;
        }
        // The most probable tokens (no larger logit) are always kept.
        const bool keep_p = mass_gt < top_p * z_k || cx == m;
        keep = keep && keep_p;
        // Top-p alone: every token below the cut must be rejected too (some candidate is, or the
        // candidates' mass reaches top_p * Z, or no finite token lies below the cut).
        if (!k_on) {
          const int rejected = sum_i(mine && !keep_p ? 1 : 0, sh);
          const float cand_mass = sum_f(cw, sh);
          if (rejected == 0 && cand_mass < top_p * z_k && n_cand < st.finite) {
            cand = false;
            fallback = true;
          }
        }
      }
      if (cand) {
        const float fw = keep ? cw : 0.0f;
        float cum, total;
        ScanFloat(sh.tmp.scan_f).InclusiveSum(fw, cum, total);
        __syncthreads();
        const float target = u * total;
        const int first = min_i(fw > 0.0f && cum > target ? tid : INT_MAX, sh);
        const int last = max_i(fw > 0.0f ? tid : -1, sh);
        const int chosen = first != INT_MAX ? first : max(last, 0);
        tok_cand = sh.cand_id[chosen];
      }
    }

    if (cand) {
      token = tok_cand;
    } else {
      // ---- whole-row path: no filter, or the exact fallback search
      float thr = -kInf;
      float z_final = z_all;
      if (fallback) {
        float t_k = -kInf;
        if (k_on) {
          // Largest key K with count(x >= K) >= k.
          int64_t klo = float_key(st.min), khi = static_cast<int64_t>(float_key(m)) + 1;
          while (khi - klo > 1) {
            int64_t keys[kPivots];
#pragma unroll
            for (int i = 0; i < kPivots; ++i) {
              keys[i] = klo + ((khi - klo) * (i + 1)) / (kPivots + 1);
              px[i] = key_float(keys[i]);
            }
            const PivotSums s = pivot_pass<true, false, false>(row, px, m, scale, -kInf, sh);
            // The keys ascend and the count condition holds on a prefix of them: klo moves to its
            // last key, khi to the first key past it.
            bool past = false;
            int64_t next_klo = klo, next_khi = khi;
#pragma unroll
            for (int i = 0; i < kPivots; ++i) {
              const bool ok = s.count[i] >= top_k;
              if (ok && !past) next_klo = keys[i];
              if (!ok && !past) next_khi = keys[i];
              past = past || !ok;
            }
            klo = next_klo;
            khi = next_khi;
          }
          t_k = key_float(klo);
        }
        thr = t_k;
        if (p_on) {
#pragma unroll
          for (int i = 0; i < kPivots; ++i) px[i] = kInf;
          const float z_k = k_on ? pivot_pass<false, false, true>(row, px, m, scale, t_k, sh).z : z_all;
          const float bound = top_p * z_k;
          // Smallest key K with mass(key > K) < top_p * Z_k, i.e. mass(x >= key_float(K + 1)).
          int64_t klo = static_cast<int64_t>(float_key(k_on ? t_k : st.min)) - 1;
          int64_t khi = float_key(m);
          while (khi - klo > 1) {
            int64_t keys[kPivots];
#pragma unroll
            for (int i = 0; i < kPivots; ++i) {
              keys[i] = klo + ((khi - klo) * (i + 1)) / (kPivots + 1);
              px[i] = key_float(keys[i] + 1);
            }
            const PivotSums s = pivot_pass<false, true, false>(row, px, m, scale, t_k, sh);
            // The masses shrink as the keys ascend: the condition mass >= bound holds on a prefix.
            bool past = false;
            int64_t next_klo = klo, next_khi = khi;
#pragma unroll
            for (int i = 0; i < kPivots; ++i) {
              const bool big = !(s.mass[i] < bound);
              if (big && !past) next_klo = keys[i];
              if (!big && !past) next_khi = keys[i];
              past = past || !big;
            }
            klo = next_klo;
            khi = next_khi;
          }
          thr = fmaxf(key_float(khi), t_k);
        }
#pragma unroll
        for (int i = 0; i < kPivots; ++i) px[i] = kInf;
        z_final = pivot_pass<false, false, true>(row, px, m, scale, thr, sh).z;
      }
      token = row.id(scan_sample(row, m, scale, thr, u * z_final, sh));
    }
  }

  if (flags == 0 && in_text) next = token == p.boi_id ? 0 : -1;
  if (flags == 0 && !in_text) next = static_cast<int>(pos + 1);
  if (tid == 0) {
    p.tokens[b] = token;
    p.next_pos[b] = next;
    p.flags[b] = flags;
  }
}

// =============================================================================================
// The split sampler (kernels/constrained_sample.py: _split_tiles_kernel, _split_select_kernel,
// _split_collect_kernel, _split_finish_kernel, launched by _launch_split). Tiles of block_v
// positions start on the vec-aligned element at or below the row's first id; the tile is the unit
// of every float sum and the histograms are integers, so the tokens do not depend on how many
// blocks share a row.
//
// Float arithmetic follows the PTX that Triton (3.x) emits for those kernels at split_config's GPU
// settings (BLOCK_V = 256, one warp for the passes and select, four for finish), so that the float
// sums that can move a token are added in the same order:
//   * 1/t is div.full.f32 and exp2 is ex2.approx.ftz.f32 (div_full, exp2_ftz);
//   * a thread holds its elements in Triton's blocked layout (runs of 16 bytes, or of 4 elements,
//     repeated every 32 * warps * run elements), reduces them as a pairwise tree in register order,
//     then a butterfly over the warp (xor 16, 8, 4, 2, 1), then the warps as (w0 + w2) + (w1 + w3)
//     (triton_sum);
//   * cumulative sums: each run scanned in order, a Kogge-Stone scan of the run totals over the warp,
//     the warps' totals added in order, each element then adds its exclusive prefix and the last of
//     a run takes the scanned total (triton_cumsum).

constexpr int kPassWarps = 4;                    // warps per block in the two passes (one tile each)
constexpr int kPassThreads = 32 * kPassWarps;
constexpr int kMaxBlockV = 256;                  // split_config's widest tile
constexpr int kLanePositions = kMaxBlockV / 32;  // positions per lane and tile (at most)
constexpr int kSplitCap = 1024;                  // split_config's CAP
constexpr int kSelectBlock = 512;                // NBLK of _split_select_kernel (one warp)
constexpr int kSelectPer = kSelectBlock / 32;    // buckets per lane and histogram block
constexpr int kSelectTiles = 128;                // TB of _split_select_kernel (select_warps = 1)
constexpr int kFinishThreads = 128;              // finish_warps = 4
constexpr int kFinishWarps = kFinishThreads / 32;
constexpr int kFinishTiles = 512;                // TB of _split_finish_kernel (128 * finish_warps)
constexpr int kFinishPer = kSplitCap / kFinishThreads;  // candidates per thread
constexpr int kFinishTilePer = kMaxBlockV / kFinishThreads;  // positions per thread of the last tile
constexpr int kTargetWarps = 8 * 132;            // TARGET_PROGRAMS of the Triton launcher (one warp each)
constexpr unsigned kFull = 0xFFFFFFFFu;
// Pass 1's per-block histogram in dynamic shared memory, used when a block covers at least
// kLocalHistMinPositions positions of its row (fewer global atomics; the sums are integers).
constexpr int kLocalHistBytes = kNumBuckets * (8 + 4);
constexpr int kLocalHistMinPositions = 4 * kNumBuckets;

static_assert(kFinishPer == 8 && kFinishTiles == 4 * kFinishThreads && kFinishWarps == 4, "finish layout");
static_assert(kSelectTiles == 4 * 32 && kSelectPer == 16, "select layout");
static_assert(kFinishTilePer == 2, "finish tile layout");

// The workspace and tiling of one split launch (carved from the binding's workspace, see
// seedfast_constrained_sample_workspace()).
struct SplitArgs {
  float* tile_m;      // [B, nt] tile max
  float* tile_s;      // [B, nt] sum exp((x - tile max)/t); then the weight above the candidates
  int32_t* tile_arg;  // [B, nt] first argmax (virtual position)
  int32_t* tile_n;    // [B, nt] finite count | BAD_BIT
  int64_t* tile_c;    // [B, nt] kept candidates' weight, fixed point
  int32_t* hist_n;    // [B, kNumBuckets] counts (zeroed by the caller)
  int64_t* hist_w;    // [B, kNumBuckets] fixed-point masses (zeroed by the caller)
  int32_t* row_i;     // [B, kRowInts]
  float* row_f;       // [B, kRowFloats]
  float* cand_x;      // [B, kSplitCap]
  int32_t* cand_j;    // [B, kSplitCap]
  int64_t nt;         // row stride of the tile workspace (a multiple of 16)
  int block_v;        // tile width (64, 128 or 256)
  int vec;            // elements per 16-byte load, 1 when the logits are not 16-byte aligned
  int tiles_per_warp; // TPP: tiles per warp in the two passes
  int local_hist;     // pass 1 adds into a shared-memory histogram per block first (kLocalHistBytes)
};

__device__ __forceinline__ int cdiv_i(int a, int b) { return (a + b - 1) / b; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);
  return v;
}
__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, d));
  return v;
}
__device__ __forceinline__ int warp_min(int v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = min(v, __shfl_xor_sync(kFull, v, d));
  return v;
}
__device__ __forceinline__ int warp_max(int v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = max(v, __shfl_xor_sync(kFull, v, d));
  return v;
}
__device__ __forceinline__ long long warp_min(long long v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = min(v, __shfl_xor_sync(kFull, v, d));
  return v;
}
__device__ __forceinline__ int warp_or(int v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v |= __shfl_xor_sync(kFull, v, d);
  return v;
}

// Kogge-Stone inclusive scan over the warp (lane L: lanes 0..L), and the exclusive prefix of an
// inclusive scan (0 on lane 0).
template <typename V>
__device__ __forceinline__ V warp_inclusive(V v, int lane) {
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const V o = __shfl_up_sync(kFull, v, d);
    if (lane >= d) v = v + o;
  }
  return v;
}
template <typename V>
__device__ __forceinline__ V warp_exclusive_of(V inclusive, int lane) {
  const V o = __shfl_up_sync(kFull, inclusive, 1);
  return lane == 0 ? V(0) : o;
}

// tl.sum over one thread's N registers (pairwise tree in register order) and its warp (butterfly).
template <int N>
__device__ __forceinline__ float triton_warp_sum(const float (&v)[N]) {
  float t[N];
#pragma unroll
  for (int i = 0; i < N; ++i) t[i] = v[i];
#pragma unroll
  for (int width = 1; width < N; width *= 2) {
#pragma unroll
    for (int i = 0; i + width < N; i += 2 * width) t[i] = t[i] + t[i + width];
  }
  return warp_sum(t[0]);
}

// tl.sum over a block of 4 warps: each warp's sum, then (w0 + w2) + (w1 + w3); every thread gets it.
// red: 4 floats of shared memory; the trailing barrier lets the next call reuse it.
template <int N>
__device__ __forceinline__ float triton_block_sum(const float (&v)[N], float* red) {
  const float w = triton_warp_sum(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = w;
  __syncthreads();
  const float all = (red[0] + red[2]) + (red[1] + red[3]);
  __syncthreads();
  return all;
}

// tl.cumsum (inclusive, in place) over a blocked layout of kW warps where chunk c of thread
// (warp w, lane L) holds kE consecutive elements starting at (c * kW * 32 + w * 32 + L) * kE.
// tot: kC * kW floats of shared memory when kW > 1 (unused for one warp); all threads must call.
template <int kC, int kE, int kW>
__device__ __forceinline__ void triton_cumsum(float (&v)[kC * kE], float* tot) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float k[kC];
#pragma unroll
  for (int c = 0; c < kC; ++c) {
#pragma unroll
    for (int i = 1; i < kE; ++i) v[c * kE + i] = v[c * kE + i - 1] + v[c * kE + i];
    k[c] = warp_inclusive(v[c * kE + kE - 1], lane);
  }
  if constexpr (kW > 1) {
    if (lane == 31) {
#pragma unroll
      for (int c = 0; c < kC; ++c) tot[c * kW + warp] = k[c];
    }
    __syncthreads();
  }
  float total = 0.0f;  // the sum of the chunks before c
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    float pre, last;
    if constexpr (kW == 1) {
      pre = total;
      last = c == 0 ? k[c] : k[c] + pre;
      total = __shfl_sync(kFull, last, 31);
    } else {
      if (c == 0) {
        pre = tot[0];
        for (int w = 1; w < warp; ++w) pre = pre + tot[w];
        float all = tot[0];
#pragma unroll
        for (int w = 1; w < kW; ++w) all = all + tot[w];
        last = warp == 0 ? k[0] : k[0] + pre;
        total = all;
      } else {
        pre = total;
        for (int w = 0; w < warp; ++w) pre = pre + tot[c * kW + w];
        float all = total;
#pragma unroll
        for (int w = 0; w < kW; ++w) all = all + tot[c * kW + w];
        last = k[c] + pre;
        total = all;
      }
    }
    const float up = __shfl_up_sync(kFull, last, 1);
    const float excl = lane == 0 ? pre : up;
#pragma unroll
    for (int i = 0; i < kE - 1; ++i) {
      if (c > 0 || threadIdx.x != 0) v[c * kE + i] = v[c * kE + i] + excl;
    }
    v[c * kE + kE - 1] = last;
  }
  if constexpr (kW > 1) __syncthreads();
}

// mirrors _bucket: the bucket of finite x counted from the top (0 holds the largest values; -0.0
// and +0.0 share one) and its upper edge.
__device__ __forceinline__ int bucket_of(float x, float& edge) {
  const int bits = __float_as_int(x);
  const bool neg = bits < 0 && x != 0.0f;
  const int mag_bits = bits & 0x7FFFFFFF;
  const int e = mag_bits >> 23;
  const int trunc = mag_bits >> (23 - kMantBits);
  const bool tiny = e < kExpLo;
  const bool huge = e >= kExpLo + kNumExp;
  const int mag = tiny ? 0 : (huge ? (kNumExp << kMantBits) + 1 : trunc - ((kExpLo << kMantBits) - 1));
  const int pos_edge = tiny ? (kExpLo << 23) : (huge ? 0x7F800000 : (trunc + 1) << (23 - kMantBits));
  const int neg_edge =
      tiny ? 0 : static_cast<int>((static_cast<unsigned>(min(trunc, (kExpLo + kNumExp) << kMantBits))
                                   << (23 - kMantBits)) | 0x80000000u);
  edge = __int_as_float(neg ? neg_edge : pos_edge);
  return neg ? kHalfBuckets + mag : kHalfBuckets - 1 - mag;
}

// mirrors _bucket_edge: the upper edge and the width of bucket jtop (0 <= jtop < kNumBuckets).
__device__ __forceinline__ float bucket_edge(int jtop, float& width) {
  const bool neg = jtop >= kHalfBuckets;
  const int mag = neg ? jtop - kHalfBuckets : kHalfBuckets - 1 - jtop;
  const bool tiny = mag == 0;
  const bool huge = mag == (kNumExp << kMantBits) + 1;
  const int trunc = mag + ((kExpLo << kMantBits) - 1);
  const float lo_v = __int_as_float(trunc << (23 - kMantBits));
  const float hi_v = __int_as_float((trunc + 1) << (23 - kMantBits));
  const float tiny_v = __int_as_float(kExpLo << 23);
  width = tiny ? tiny_v : (huge ? kInf : hi_v - lo_v);
  return neg ? (tiny ? 0.0f : -lo_v) : (tiny ? tiny_v : (huge ? kInf : hi_v));
}

// mirrors _row_layout and _row_scale: a row's grammar state and virtual row in the aligned frame.
struct SplitRow {
  int64_t pos;
  int64_t abase;  // aligned element index (from the logits pointer) of position 0 of tile 0
  int lo_id, length, shift, span;
  bool in_text, forced, active, greedy;
  float scale;
};

__device__ __forceinline__ int64_t read_pos(const Params& p, int64_t row) {
  return p.pos_is_int64 ? static_cast<const int64_t*>(p.image_pos)[row]
                        : static_cast<int64_t>(static_cast<const int32_t*>(p.image_pos)[row]);
}

__device__ __forceinline__ SplitRow split_row(const Params& p, const SplitArgs& s, int64_t row) {
  SplitRow r;
  r.pos = read_pos(p, row);
  r.in_text = r.pos < 0;
  r.forced = r.pos >= p.codes_per_image;
  r.active = !r.forced;
  r.lo_id = r.in_text ? 0 : p.first_code;
  r.length = r.in_text ? p.text_vocab : p.num_codes;
  const int64_t first = row * p.stride_row + r.lo_id;  // >= 0: strides are never negative
  // vec is a power of two (1, 4 or 8): the aligned index at or below `first`, without a 64-bit division.
  r.shift = static_cast<int>(first & static_cast<int64_t>(s.vec - 1));
  r.abase = first - r.shift;
  r.span = r.shift + r.length + (r.in_text ? 1 : 0);
  const float temp = p.temperature[row * p.s_temp];
  // NaN temperatures are greedy too; 1/t saturates at FLT_MAX so that (m - m) * scale stays 0.
  r.greedy = !(temp > 0.0f);
  r.scale = fminf(div_full(1.0f, r.greedy ? 1.0f : temp) * kLog2e, FLT_MAX);
  return r;
}

template <typename T>
__device__ __forceinline__ float boi_logit(const Params& p, int64_t row, const SplitRow& r) {
  return r.in_text ? to_float(static_cast<const T*>(p.logits)[row * p.stride_row + p.boi_id]) : 0.0f;
}

// mirrors _tile for one lane of a one-warp tile: the positions lane owns in Triton's layout, runs
// of vec (16 bytes) at chunks lane, lane + 32, ... in register order; each run is one 16-byte load
// when it holds a position of the row (its neighbours lie in the same 16-byte block). x[k] is
// position k of the lane, bit k of the returned mask says whether it is valid, its virtual
// position is pos(t, block_v, lane, k) - shift.
template <typename T>
struct LaneTile {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  static constexpr int kChunks = kLanePositions / kVec;
  static_assert(kChunks >= 1 && kChunks * kVec == kLanePositions, "lane tile");

  __device__ __forceinline__ static int pos(int t, int block_v, int lane, int k) {
    return t * block_v + (lane + 32 * (k / kVec)) * kVec + (k % kVec);
  }

  __device__ __forceinline__ static unsigned load(const T* logits, const SplitRow& r, const SplitArgs& s, float boi_x,
                                                  int t, int lane, float (&x)[kLanePositions]) {
    unsigned valid = 0;
    const int limit = r.shift + r.length;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = lane + 32 * i;
      const bool in_tile = c * kVec < s.block_v;
      const int tt0 = t * s.block_v + c * kVec;
      const bool load_ok = in_tile && tt0 < limit;
      float v[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[e] = 0.0f;
      if (load_ok) {
        if (s.vec == kVec) {
          unpack_vector<T>(__ldg(reinterpret_cast<const uint4*>(logits + r.abase + tt0)), v);
        } else {
          // Logits not 16-byte aligned (vec = 1, shift = 0): the row's own elements only.
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            if (tt0 + e < limit) v[e] = to_float(__ldg(logits + r.abase + tt0 + e));
          }
        }
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const int j = tt0 + e - r.shift;
        const bool inside = load_ok && j >= 0 && j < r.length;
        const bool extra = in_tile && r.in_text && j == r.length;
        x[i * kVec + e] = extra ? boi_x : v[e];
        if (inside || extra) valid |= 1u << (i * kVec + e);
      }
    }
    return valid;
  }
};

// The tiles of a row that warp w of block (row, y) takes: y * kPassWarps * TPP + w + i * kPassWarps.
struct TileRange {
  int first, stop, step;
};
__device__ __forceinline__ TileRange tile_range(const SplitArgs& s, int n_tiles) {
  const int per_block = kPassWarps * s.tiles_per_warp;
  const int first = static_cast<int>(blockIdx.y) * per_block;
  TileRange tr;
  tr.first = first + static_cast<int>(threadIdx.x >> 5);
  tr.stop = min(first + per_block, n_tiles);
  tr.step = kPassWarps;
  return tr;
}

// ---- pass 1: mirrors _split_tiles_kernel (a warp per tile)
//
// The histogram sums are integers, so their order is free: when a block covers many tiles of its
// row (s.local_hist, large batches), the block first adds into a histogram in dynamic shared
// memory and then flushes its non-empty buckets with one global atomic each; otherwise every token
// goes straight to the global histogram, as in Triton.
template <typename T>
__global__ void __launch_bounds__(kPassThreads) split_tiles_kernel(const Params p, const SplitArgs s) {
  using Tile = LaneTile<T>;
  extern __shared__ unsigned long long local_w[];  // [kNumBuckets] masses, then [kNumBuckets] counts
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const SplitRow r = split_row(p, s, row);
  if (!r.active) return;
  const int n_tiles = cdiv_i(r.span, s.block_v);
  const TileRange tr = tile_range(s, n_tiles);
  if (tr.first - static_cast<int>(threadIdx.x >> 5) >= tr.stop) return;  // the whole block is past the row
  const int64_t top_k = p.top_k[row * p.s_topk];
  const float top_p = p.top_p[row * p.s_topp];
  const bool hist_on = !r.greedy && (top_k > 0 || !(top_p >= 1.0f));
  const bool local = hist_on && s.local_hist != 0;  // uniform over the block
  int* local_n = reinterpret_cast<int*>(local_w + kNumBuckets);
  if (local) {
    for (int j = threadIdx.x; j < kNumBuckets; j += kPassThreads) {
      local_w[j] = 0ull;
      local_n[j] = 0;
    }
    __syncthreads();
  }
  const float boi_x = boi_logit<T>(p, row, r);
  const T* logits = static_cast<const T*>(p.logits);
  int32_t* hist_n = local ? local_n : s.hist_n + row * kNumBuckets;
  unsigned long long* hist_w =
      local ? local_w : reinterpret_cast<unsigned long long*>(s.hist_w + row * kNumBuckets);
  for (int t = tr.first; t < tr.stop; t += tr.step) {
    float x[kLanePositions];
    const unsigned valid = Tile::load(logits, r, s, boi_x, t, lane, x);
    unsigned live = 0;
    int bad = 0;
    float mt = -kInf;
#pragma unroll
    for (int k = 0; k < kLanePositions; ++k) {
      const bool v = (valid >> k) & 1u;
      if (v && is_live(x[k])) live |= 1u << k;
      if (v && (x[k] != x[k] || x[k] == kInf)) bad = 1;
      if ((live >> k) & 1u) mt = fmaxf(mt, x[k]);
    }
    mt = warp_max(mt);
    int arg = kBig;
#pragma unroll
    for (int k = 0; k < kLanePositions; ++k) {
      if (((live >> k) & 1u) && x[k] == mt) arg = min(arg, Tile::pos(t, s.block_v, lane, k) - r.shift);
    }
    arg = warp_min(arg);
    const float mref = mt > -kInf ? mt : 0.0f;
    float w[kLanePositions];
#pragma unroll
    for (int k = 0; k < kLanePositions; ++k) w[k] = ((live >> k) & 1u) ? exp2_ftz((x[k] - mref) * r.scale) : 0.0f;
    const float st = triton_warp_sum(w);
    const int nt = warp_sum(__popc(live)) + (warp_or(bad) ? kBadBit : 0);
    if (lane == 0) {
      const int64_t at = row * s.nt + t;
      s.tile_m[at] = mt;
      s.tile_s[at] = st;
      s.tile_arg[at] = arg;
      s.tile_n[at] = nt;
    }
    if (hist_on) {
      // Every finite token into the row's histogram: its count, and its weight relative to the
      // bucket's upper edge in fixed point (integer atomics: the sums do not depend on the order).
#pragma unroll
      for (int k = 0; k < kLanePositions; ++k) {
        if ((live >> k) & 1u) {
          float edge;
          const int jb = bucket_of(x[k], edge);
          const float term = exp2_ftz((x[k] - edge) * r.scale);
          atomicAdd(hist_n + jb, 1);
          atomicAdd(hist_w + jb, static_cast<unsigned long long>(static_cast<long long>(term * kFix)));
        }
      }
    }
  }
  if (local) {
    __syncthreads();
    int32_t* out_n = s.hist_n + row * kNumBuckets;
    unsigned long long* out_w = reinterpret_cast<unsigned long long*>(s.hist_w + row * kNumBuckets);
    for (int j = threadIdx.x; j < kNumBuckets; j += kPassThreads) {
      const int n = local_n[j];
      if (n != 0) {
        atomicAdd(out_n + j, n);
        atomicAdd(out_w + j, local_w[j]);
      }
    }
  }
}

// mirrors _hist_block: buckets [j0, j0 + kSelectBlock) of one row in Triton's one-warp layout
// (element c * 4 + i of lane L is bucket j0 + c * 128 + 4 L + i): counts, inclusive cumulative
// counts and exclusive cumulative masses exp((x - m)/t) from the top after the carries, and the
// carries on.
__device__ __forceinline__ int select_bucket(int j0, int lane, int e) {
  return j0 + (e / 4) * 128 + 4 * lane + (e % 4);
}

__device__ __forceinline__ void hist_block(const int32_t* hist_n, const int64_t* hist_w, int j0, int lane, float m,
                                           float scale, int& c_carry, float& w_carry, int (&cnt)[kSelectPer],
                                           int (&c_incl)[kSelectPer], float (&w_excl)[kSelectPer]) {
  float w[kSelectPer];
#pragma unroll
  for (int e = 0; e < kSelectPer; ++e) {
    const int jb = select_bucket(j0, lane, e);
    const bool ok = jb < kNumBuckets;
    cnt[e] = ok ? hist_n[jb] : 0;
    const long long fixed = ok ? hist_w[jb] : 0;
    float width;
    const float edge = bucket_edge(ok ? jb : 0, width);
    // Non-empty buckets lie at or below the bucket of m: their edges at most one width above m.
    w[e] = cnt[e] > 0 ? __fmul_rn(__fmul_rn(static_cast<float>(fixed), kInvFix),
                                  exp2_ftz(fminf((edge - m) * scale, 126.0f)))
                      : 0.0f;
    w_excl[e] = w[e];
  }
  // The integer scan (exact in any order), per run of 4 then over the lanes.
  int run = 0;
#pragma unroll
  for (int c = 0; c < kSelectPer / 4; ++c) {
    int loc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) loc[i] = (i == 0 ? 0 : loc[i - 1]) + cnt[c * 4 + i];
    const int incl = warp_inclusive(loc[3], lane);
    const int pre = run + warp_exclusive_of(incl, lane);
#pragma unroll
    for (int i = 0; i < 4; ++i) c_incl[c * 4 + i] = c_carry + (pre + loc[i]);
    run += __shfl_sync(kFull, incl, 31);
  }
  triton_cumsum<kSelectPer / 4, 4, 1>(w_excl, nullptr);
  int c_top = 0;
  float w_top = -kInf;
#pragma unroll
  for (int e = 0; e < kSelectPer; ++e) {
    const float w_incl = w_carry + w_excl[e];
    w_excl[e] = w_incl - w[e];
    c_top = max(c_top, c_incl[e]);
    w_top = fmaxf(w_top, w_incl);
  }
  c_carry = warp_max(c_top);
  w_carry = warp_max(w_top);
}

template <typename V>
__device__ __forceinline__ V from_lane(V v, int owner) { return __shfl_sync(kFull, v, owner); }

// The values at bucket jb (held by one lane of the block [j0, j0 + kSelectBlock)).
__device__ __forceinline__ void bucket_values(int jb, int j0, int lane, const int (&cnt)[kSelectPer],
                                              const int (&c_incl)[kSelectPer], const float (&w_excl)[kSelectPer],
                                              int& above, int& incl, float& mass) {
  int a = 0, n = 0;
  float w = 0.0f;
#pragma unroll
  for (int e = 0; e < kSelectPer; ++e) {
    if (select_bucket(j0, lane, e) == jb) {
      a = c_incl[e] - cnt[e];
      n = c_incl[e];
      w = w_excl[e];
    }
  }
  const int owner = ((jb - j0) & 127) >> 2;
  above = from_lane(a, owner);
  incl = from_lane(n, owner);
  mass = from_lane(w, owner);
}

// ---- per row: mirrors _split_select_kernel (one warp per row)
__global__ void __launch_bounds__(32) split_select_kernel(const Params p, const SplitArgs s) {
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const SplitRow r = split_row(p, s, row);
  const int64_t top_k = p.top_k[row * p.s_topk];
  const float top_p = p.top_p[row * p.s_topp];
  const int n_tiles = r.active ? cdiv_i(r.span, s.block_v) : 0;
  const float* tile_m = s.tile_m + row * s.nt;
  const float* tile_s = s.tile_s + row * s.nt;
  const int32_t* tile_arg = s.tile_arg + row * s.nt;
  const int32_t* tile_n = s.tile_n + row * s.nt;

  // ---- merge the tiles in tile order: lane L holds tiles t0 + 4L .. 4L + 3 (16-byte loads; the
  // workspace rows are padded to 16 tiles, so a run that starts below n_tiles lies inside them).
  float m = -kInf;
  int n_fin = 0, bad = 0;
  for (int t0 = 0; t0 < n_tiles; t0 += kSelectTiles) {
    const int tb = t0 + 4 * lane;
    if (tb < n_tiles) {
      const float4 mv = *reinterpret_cast<const float4*>(tile_m + tb);
      const int4 nv = *reinterpret_cast<const int4*>(tile_n + tb);
      const float ms[4] = {mv.x, mv.y, mv.z, mv.w};
      const int ns[4] = {nv.x, nv.y, nv.z, nv.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (tb + q < n_tiles) {
          m = fmaxf(m, ms[q]);
          bad |= ns[q] & kBadBit;
          n_fin += ns[q] & (kBadBit - 1);
        }
      }
    }
  }
  m = warp_max(m);
  n_fin = warp_sum(n_fin);
  bad = warp_or(bad);
  int arg = kBig;
  float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int t0 = 0; t0 < n_tiles; t0 += kSelectTiles) {
    const int tb = t0 + 4 * lane;
    if (tb < n_tiles) {
      const float4 mv = *reinterpret_cast<const float4*>(tile_m + tb);
      const float4 sv = *reinterpret_cast<const float4*>(tile_s + tb);
      const int4 av = *reinterpret_cast<const int4*>(tile_arg + tb);
      const float ms[4] = {mv.x, mv.y, mv.z, mv.w};
      const float ss[4] = {sv.x, sv.y, sv.z, sv.w};
      const int as[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (tb + q < n_tiles) {
          if (ms[q] == m) arg = min(arg, as[q]);
          z[q] = z[q] + (ms[q] > -kInf ? __fmul_rn(ss[q], exp2_ftz((ms[q] - m) * r.scale)) : 0.0f);
        }
      }
    }
  }
  arg = warp_min(arg);
  const float z_all = triton_warp_sum(z);
  const bool non_finite = r.active && bad != 0;
  const bool nothing = r.active && !non_finite && n_fin == 0;
  const bool error = non_finite || nothing;
  const bool sampling = r.active && !error && !r.greedy;
  const bool k_on = sampling && top_k > 0 && top_k < n_fin;
  const bool p_on = sampling && !(top_p >= 1.0f);
  const bool filt = k_on || p_on;
  float unused_edge;
  const int j_top = bucket_of(filt ? m : 0.0f, unused_edge);
  const int j_start = ((filt ? j_top : kNumBuckets) / kSelectBlock) * kSelectBlock;
  const int32_t* hist_n = s.hist_n + row * kNumBuckets;
  const int64_t* hist_w = s.hist_w + row * kNumBuckets;

  // ---- top-k: the first bucket whose inclusive count reaches k
  int bk = 0, above_k = 0, incl_k = 0;
  float mass_k = 0.0f;
  {
    bool todo = k_on;
    int c_carry = 0;
    float w_carry = 0.0f;
    for (int j0 = j_start; todo && j0 < kNumBuckets; j0 += kSelectBlock) {
      int cnt[kSelectPer], c_incl[kSelectPer];
      float w_excl[kSelectPer];
      hist_block(hist_n, hist_w, j0, lane, m, r.scale, c_carry, w_carry, cnt, c_incl, w_excl);
      int first = kNumBuckets;
#pragma unroll
      for (int e = 0; e < kSelectPer; ++e) {
        const int jb = select_bucket(j0, lane, e);
        if (jb < kNumBuckets && c_incl[e] >= top_k) first = min(first, jb);
      }
      first = warp_min(first);
      if (first < kNumBuckets) {
        bk = first;
        bucket_values(first, j0, lane, cnt, c_incl, w_excl, above_k, incl_k, mass_k);
        todo = false;
      }
    }
  }

  // ---- top-p: the last non-empty bucket (down to bk) with less mass above it than top_p * Z
  // (top_p times the mass above bk with top-k: a lower bound of the top-k mass, so the boundary
  // lies in [c_lo, bk]). The top bucket always qualifies: its maximum is kept.
  const float bound = k_on ? top_p * mass_k : top_p * z_all;
  const int limit = k_on ? bk : kNumBuckets - 1;
  int bp = j_top, above_p = 0, incl_p = 0;
  float mass_p = 0.0f;
  {
    bool todo = p_on;
    int c_carry = 0;
    float w_carry = 0.0f;
    for (int j0 = j_start; todo && j0 < kNumBuckets; j0 += kSelectBlock) {
      int cnt[kSelectPer], c_incl[kSelectPer];
      float w_excl[kSelectPer];
      hist_block(hist_n, hist_w, j0, lane, m, r.scale, c_carry, w_carry, cnt, c_incl, w_excl);
      int last = -1, rejected = 0;
#pragma unroll
      for (int e = 0; e < kSelectPer; ++e) {
        const int jb = select_bucket(j0, lane, e);
        const bool inside = cnt[e] > 0 && jb <= limit;
        const bool good = inside && (w_excl[e] < bound || jb == j_top);
        if (good) last = max(last, jb);
        if (inside && !good) rejected = 1;
      }
      last = warp_max(last);
      if (last >= 0) {
        bp = last;
        bucket_values(last, j0, lane, cnt, c_incl, w_excl, above_p, incl_p, mass_p);
      }
      if (warp_or(rejected) != 0 || j0 + kSelectBlock > limit) todo = false;
    }
  }

  int c_hi = k_on ? bk : bp;
  int c_lo = p_on ? bp : bk;
  const int n_above = p_on ? above_p : above_k;
  const float mass_above = p_on ? mass_p : mass_k;
  const int n_cand = (k_on ? incl_k : incl_p) - n_above;
  float width_top, width_lo;
  bucket_edge(j_top, width_top);
  bucket_edge(min(max(c_lo, 0), kNumBuckets - 1), width_lo);
  const bool trusted = fmaxf(width_top, width_lo) * r.scale <= kMaxWidthLog2;
  // Top-k alone uses counts only; top-p compares the fixed-point masses.
  const bool fallback = filt && (n_cand > kSplitCap || (p_on && !trusted));
  // Rows without a filter keep every finite token: all of them lie "above" an empty range.
  c_lo = filt ? c_lo : kNumBuckets;
  c_hi = filt ? c_hi : kNumBuckets - 1;
  const int mode = sampling ? (fallback ? kModeFallback : kModeSample) : kModeDone;
  if (lane == 0) {
    int32_t* ri = s.row_i + row * kRowInts;
    ri[0] = mode;
    ri[1] = (k_on ? 1 : 0) + 2 * (p_on ? 1 : 0);
    ri[2] = c_lo;
    ri[3] = c_hi;
    ri[4] = n_above;
    ri[5] = 0;  // the candidate counter of pass 2
    float* rf = s.row_f + row * kRowFloats;
    rf[0] = m;
    rf[1] = mass_above;
    rf[2] = z_all;
    // ---- rows finished here: greedy, errors, forced </img>
    if (mode == kModeDone) {
      int64_t tok = arg < r.length ? static_cast<int64_t>(r.lo_id) + arg : static_cast<int64_t>(p.boi_id);
      if (error) tok = p.eos_id;
      if (r.forced) tok = p.eoi_id;
      int64_t nxt = r.in_text && tok == p.boi_id ? 0 : -1;
      if (!r.in_text && !r.forced && !error) nxt = r.pos + 1;
      p.tokens[row] = tok;
      p.next_pos[row] = static_cast<int32_t>(nxt);
      p.flags[row] = (non_finite ? kFlagNonFinite : 0) + (nothing ? kFlagNothingAllowed : 0);
    }
  }
}

// ---- pass 2: mirrors _split_collect_kernel (a warp per tile)
template <typename T>
__global__ void __launch_bounds__(kPassThreads) split_collect_kernel(const Params p, const SplitArgs s) {
  using Tile = LaneTile<T>;
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x & 31;
  int32_t* ri = s.row_i + row * kRowInts;
  if (ri[0] != kModeSample) return;
  const SplitRow r = split_row(p, s, row);
  const int n_tiles = cdiv_i(r.span, s.block_v);
  const TileRange tr = tile_range(s, n_tiles);
  if (tr.first >= tr.stop) return;
  const float boi_x = boi_logit<T>(p, row, r);
  const int c_lo = ri[2];
  const int c_hi = ri[3];
  const float m = s.row_f[row * kRowFloats];
  const T* logits = static_cast<const T*>(p.logits);
  float* cand_x = s.cand_x + row * kSplitCap;
  int32_t* cand_j = s.cand_j + row * kSplitCap;
  for (int t = tr.first; t < tr.stop; t += tr.step) {
    float x[kLanePositions];
    const unsigned valid = Tile::load(logits, r, s, boi_x, t, lane, x);
    float above[kLanePositions];
    unsigned inside = 0;
#pragma unroll
    for (int k = 0; k < kLanePositions; ++k) {
      const bool live = ((valid >> k) & 1u) && is_live(x[k]);
      const float xs = live ? x[k] : 0.0f;
      float unused;
      const int jb = bucket_of(xs, unused);
      const float w = live ? exp2_ftz((xs - m) * r.scale) : 0.0f;
      above[k] = live && jb < c_lo ? w : 0.0f;
      if (live && jb >= c_lo && jb <= c_hi) inside |= 1u << k;
    }
    const float tile_above = triton_warp_sum(above);
    const int mine = __popc(inside);
    const int before = warp_exclusive_of(warp_inclusive(mine, lane), lane);
    const int n_in = warp_sum(mine);
    int base = 0;
    if (lane == 0) {
      const int64_t at = row * s.nt + t;
      s.tile_s[at] = tile_above;
      s.tile_c[at] = 0;
      if (n_in > 0) base = atomicAdd(ri + 5, n_in);
    }
    base = from_lane(base, 0);
    // The candidates' order in the buffer does not matter: finish sorts them.
    int slot = base + before;
#pragma unroll
    for (int k = 0; k < kLanePositions; ++k) {
      if ((inside >> k) & 1u) {
        if (slot >= 0 && slot < kSplitCap) {
          cand_x[slot] = x[k];
          cand_j[slot] = Tile::pos(t, s.block_v, lane, k) - r.shift;
        }
        ++slot;
      }
    }
  }
}

// The finish kernel's shared memory: the sort, then the sorted candidates.
struct FinishShared {
  union {
    cub::BlockRadixSort<unsigned long long, kFinishThreads, kFinishPer>::TempStorage sort;
    struct {
      int32_t key[kSplitCap];  // sorted keys (slot = rank)
      int32_t pos[kSplitCap];  // sorted virtual positions; then free
      float incl[kSplitCap];   // inclusive cumulative weight in rank order
    } cand;
  } u;
  float tot[2 * kFinishWarps];  // triton_cumsum's warp totals
  float red_f[kFinishWarps];
  int red_i[kFinishWarps];
  long long red_l[kFinishWarps];
  float pick_f;
};

// Max (kMax) or min of v over the finish block's warps; every thread gets it, all must call.
template <bool kMax, typename T>
__device__ __forceinline__ T block_extreme(T v, T* red) {
  if constexpr (kMax) {
    v = warp_max(v);
  } else {
    v = warp_min(v);
  }
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  const T all = kMax ? max(max(red[0], red[1]), max(red[2], red[3])) : min(min(red[0], red[1]), min(red[2], red[3]));
  __syncthreads();
  return all;
}
__device__ __forceinline__ float block_max(float v, FinishShared& sh) { return block_extreme<true>(v, sh.red_f); }
__device__ __forceinline__ int block_min(int v, FinishShared& sh) { return block_extreme<false>(v, sh.red_i); }
__device__ __forceinline__ int block_max(int v, FinishShared& sh) { return block_extreme<true>(v, sh.red_i); }
__device__ __forceinline__ long long block_min(long long v, FinishShared& sh) {
  return block_extreme<false>(v, sh.red_l);
}
// The value v of the one thread whose `mine` is true (0 when none); all threads must call.
__device__ __forceinline__ float block_pick(bool mine, float v, FinishShared& sh) {
  if (threadIdx.x == 0) sh.pick_f = 0.0f;
  __syncthreads();
  if (mine) sh.pick_f = v;
  __syncthreads();
  const float all = sh.pick_f;
  __syncthreads();
  return all;
}

// Slot of candidate register e of thread tid in Triton's finish layout ([1, CAP] over 4 warps,
// runs of 4 repeated every 512).
__device__ __forceinline__ int finish_slot(int tid, int e) { return (e / 4) * 512 + 4 * tid + (e % 4); }

// The kept weight of tiles [t0, t0 + kFinishTiles), 4 per thread: the weight above the
// candidates plus the kept candidates' (fixed point, added at L2 by this block's atomics, so read
// past L1).
__device__ __forceinline__ void tile_weights(const float* tile_a, const int64_t* tile_c, int t0, int n_tiles,
                                             float (&s_t)[4]) {
  const int tb = t0 + 4 * static_cast<int>(threadIdx.x);
#pragma unroll
  for (int q = 0; q < 4; ++q) s_t[q] = 0.0f;
  if (tb < n_tiles) {
    const float4 av = *reinterpret_cast<const float4*>(tile_a + tb);
    const longlong2 c01 = __ldcg(reinterpret_cast<const longlong2*>(tile_c + tb));
    const longlong2 c23 = __ldcg(reinterpret_cast<const longlong2*>(tile_c + tb + 2));
    const float as[4] = {av.x, av.y, av.z, av.w};
    const long long cs[4] = {c01.x, c01.y, c23.x, c23.y};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      // a + c * 2^-43: the scaling is exact, so this equals Triton's fused multiply-add.
      if (tb + q < n_tiles) s_t[q] = as[q] + __fmul_rn(static_cast<float>(cs[q]), kInvFix);
    }
  }
}

// ---- per row: mirrors _split_finish_kernel (four warps per row)
template <typename T>
__global__ void __launch_bounds__(kFinishThreads) split_finish_kernel(const Params p, const SplitArgs s) {
  __shared__ FinishShared sh;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const int32_t* ri = s.row_i + row * kRowInts;
  if (ri[0] != kModeSample) return;
  const SplitRow r = split_row(p, s, row);
  const int64_t top_k = p.top_k[row * p.s_topk];
  const float top_p = p.top_p[row * p.s_topp];
  const int filters = ri[1];
  const bool k_on = (filters & 1) != 0;
  const bool p_on = (filters & 2) != 0;
  const int c_lo = ri[2];
  const int c_hi = ri[3];
  const int n_above = ri[4];
  const int n_cand = max(0, min(ri[5], kSplitCap));
  const float m = s.row_f[row * kRowFloats + 0];
  const float mass_above = s.row_f[row * kRowFloats + 1];
  const float z_all = s.row_f[row * kRowFloats + 2];

  // ---- the candidates sorted by logit (descending), ties by position (mirrors _sort_candidates:
  // the packed words ((2^31 - 1 - key) << 31) | position in ascending order, 2^63 - 1 past n_cand)
  {
    unsigned long long packed[kFinishPer];
    const float* cx_in = s.cand_x + row * kSplitCap;
    const int32_t* cj_in = s.cand_j + row * kSplitCap;
#pragma unroll
    for (int e = 0; e < kFinishPer; ++e) {
      const int slot = tid * kFinishPer + e;
      if (slot < n_cand) {
        const long long key = float_key(cx_in[slot]);
        packed[e] = (static_cast<unsigned long long>(2147483647LL - key) << 31) |
                    static_cast<unsigned long long>(static_cast<uint32_t>(cj_in[slot]) & 0x7FFFFFFFu);
      } else {
        packed[e] = 0x7FFFFFFFFFFFFFFFull;
      }
    }
    // Blocked output: thread tid holds ranks tid * 8 .. tid * 8 + 7.
    cub::BlockRadixSort<unsigned long long, kFinishThreads, kFinishPer>(sh.u.sort).Sort(packed, 0, 63);
    __syncthreads();  // the sort's storage becomes the candidate arrays
#pragma unroll
    for (int e = 0; e < kFinishPer; ++e) {
      const int rank = tid * kFinishPer + e;
      sh.u.cand.key[rank] = static_cast<int32_t>(2147483647LL - static_cast<long long>(packed[e] >> 31));
      sh.u.cand.pos[rank] = static_cast<int32_t>(packed[e] & 2147483647ull);
    }
    __syncthreads();
  }

  // Triton's layout from here on: register e of thread tid is slot finish_slot(tid, e).
  int32_t ckey[kFinishPer], cj[kFinishPer];
  float cw[kFinishPer], incl[kFinishPer];
#pragma unroll
  for (int e = 0; e < kFinishPer; ++e) {
    const int slot = finish_slot(tid, e);
    ckey[e] = sh.u.cand.key[slot];
    cj[e] = sh.u.cand.pos[slot];
    cw[e] = slot < n_cand ? exp2_ftz((key_float(ckey[e]) - m) * r.scale) : 0.0f;
    incl[e] = cw[e];
  }
  triton_cumsum<2, 4, kFinishWarps>(incl, sh.tot);
#pragma unroll
  for (int e = 0; e < kFinishPer; ++e) sh.u.cand.incl[finish_slot(tid, e)] = incl[e];
  __syncthreads();

  // ---- top-k: the k-th largest logit; top-p: the last tie group whose strictly larger (top-k)
  // tokens weigh less than top_p times the top-k total; the global maximum is kept.
  const long long kth = top_k - 1 - n_above;
  const int t_k = (kth >= 0 && kth < kSplitCap) ? sh.u.cand.key[kth] : 0;
  bool keep[kFinishPer];
  float kept[kFinishPer];
#pragma unroll
  for (int e = 0; e < kFinishPer; ++e) {
    keep[e] = finish_slot(tid, e) < n_cand && (!k_on || ckey[e] >= t_k);
    kept[e] = keep[e] ? cw[e] : 0.0f;
  }
  const float kept_sum = triton_block_sum(kept, sh.red_f);
  const float z_k = k_on ? mass_above + kept_sum : z_all;
  const float bound = top_p * z_k;
  int last = -1;
#pragma unroll
  for (int e = 0; e < kFinishPer; ++e) {
    const int slot = finish_slot(tid, e);
    const bool valid = slot < n_cand;
    const bool has_prev = valid && slot > 0;
    const float mass_before = has_prev ? sh.u.cand.incl[slot - 1] : 0.0f;
    const int key_prev = has_prev ? sh.u.cand.key[slot - 1] : 0;
    const bool starts = valid && (!has_prev || key_prev != ckey[e]);
    const bool first = n_above == 0 && slot == 0;
    if (starts && keep[e] && (mass_above + mass_before < bound || first)) last = max(last, slot);
  }
  last = block_max(last, sh);
  const int t_p = last >= 0 ? sh.u.cand.key[last] : 0;
  long long thr = 2147483648LL;
#pragma unroll
  for (int e = 0; e < kFinishPer; ++e) {
    keep[e] = keep[e] && (!p_on || (last >= 0 && ckey[e] >= t_p));
    if (keep[e]) thr = min(thr, static_cast<long long>(ckey[e]));
  }
  thr = block_min(thr, sh);

  // ---- the kept weight per tile: the weight above the candidates plus the kept candidates'
  // (added per tile in fixed point, so in any order), summed in tile order
  int64_t* tile_c = s.tile_c + row * s.nt;
  const float* tile_a = s.tile_s + row * s.nt;
  const int n_tiles = cdiv_i(r.span, s.block_v);
#pragma unroll
  for (int e = 0; e < kFinishPer; ++e) {
    if (keep[e]) {
      const int ctile = (r.shift + cj[e]) / s.block_v;
      if (ctile >= 0 && ctile < n_tiles) {
        atomicAdd(reinterpret_cast<unsigned long long*>(tile_c + ctile),
                  static_cast<unsigned long long>(static_cast<long long>(cw[e] * kFix)));
      }
    }
  }
  __threadfence();
  __syncthreads();
  float total = 0.0f;
  for (int t0 = 0; t0 < n_tiles; t0 += kFinishTiles) {
    float s_t[4];
    tile_weights(tile_a, tile_c, t0, n_tiles, s_t);
    total = total + triton_block_sum(s_t, sh.red_f);
  }
  const float u = row_uniform(p.seed[row * p.s_seed], p.offset[row * p.s_off], p.stream[row * p.s_stream]);
  const float target = u * total;
  float carry = 0.0f;
  int t_hit = -1, t_last = 0;
  float c_hit = 0.0f, c_last = 0.0f;
  for (int t0 = 0; t0 < n_tiles && t_hit < 0; t0 += kFinishTiles) {
    float s_t[4], inc[4];
    tile_weights(tile_a, tile_c, t0, n_tiles, s_t);
#pragma unroll
    for (int q = 0; q < 4; ++q) inc[q] = s_t[q];
    triton_cumsum<1, 4, kFinishWarps>(inc, sh.tot);
    int hit = kBig, last_t = -1;
    float top = -kInf, c_at_hit = 0.0f, c_at_last = 0.0f;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int tb = t0 + 4 * tid + q;
      inc[q] = carry + inc[q];
      top = fmaxf(top, inc[q]);
      if (s_t[q] > 0.0f && inc[q] > target && hit == kBig) {
        hit = tb;
        c_at_hit = inc[q] - s_t[q];
      }
      if (s_t[q] > 0.0f) {
        last_t = tb;
        c_at_last = inc[q] - s_t[q];
      }
    }
    const int hit_all = block_min(hit, sh);
    const int last_all = block_max(last_t, sh);
    if (hit_all < kBig) {
      t_hit = hit_all;
      c_hit = block_pick(hit == hit_all, c_at_hit, sh);
    }
    if (last_all >= 0) {
      t_last = last_all;
      c_last = block_pick(last_t == last_all, c_at_last, sh);
    }
    carry = block_max(top, sh);
  }
  // Rounding can leave the target at the top: the last tile with weight then.
  if (t_hit < 0) {
    t_hit = t_last;
    c_hit = c_last;
  }

  // ---- inverse CDF in id order inside that tile (thread tid holds positions 2 tid, 2 tid + 1)
  const T* logits = static_cast<const T*>(p.logits);
  const float boi_x = boi_logit<T>(p, row, r);
  float w[kFinishTilePer], cum[kFinishTilePer];
  int jpos[kFinishTilePer];
#pragma unroll
  for (int k = 0; k < kFinishTilePer; ++k) {
    const int tt = kFinishTilePer * tid + k;
    const int j = t_hit * s.block_v + tt - r.shift;
    jpos[k] = j;
    float x = 0.0f;
    bool valid = false;
    if (tt < s.block_v && j >= 0 && j < r.length) {
      x = to_float(logits[r.abase + r.shift + j]);
      valid = true;
    } else if (tt < s.block_v && r.in_text && j == r.length) {
      x = boi_x;
      valid = true;
    }
    const bool live = valid && is_live(x);
    const float xs = live ? x : 0.0f;
    float unused;
    const int jb = bucket_of(xs, unused);
    const bool kept_here = live && (jb < c_lo || (jb <= c_hi && static_cast<long long>(float_key(xs)) >= thr));
    w[k] = kept_here ? exp2_ftz((xs - m) * r.scale) : 0.0f;
    cum[k] = w[k];
  }
  triton_cumsum<1, kFinishTilePer, kFinishWarps>(cum, sh.tot);
  int first_j = kBig, last_j = -1;
#pragma unroll
  for (int k = 0; k < kFinishTilePer; ++k) {
    const float c = c_hit + cum[k];
    if (w[k] > 0.0f) {
      if (c > target) first_j = min(first_j, jpos[k]);
      last_j = max(last_j, jpos[k]);
    }
  }
  first_j = block_min(first_j, sh);
  last_j = block_max(last_j, sh);
  const int pick = first_j < kBig ? first_j : last_j;
  if (tid == 0) {
    const int64_t tok = pick < r.length ? static_cast<int64_t>(r.lo_id) + pick : static_cast<int64_t>(p.boi_id);
    const int64_t nxt = r.in_text ? (tok == p.boi_id ? 0 : -1) : r.pos + 1;
    p.tokens[row] = tok;
    p.next_pos[row] = static_cast<int32_t>(nxt);
    p.flags[row] = 0;
  }
}

// The split launch's geometry (mirrors split_config and the sizes of _launch_split).
struct SplitGeometry {
  int vec, block_v, num_tiles;
  int64_t nt;  // tile workspace row stride: num_tiles rounded up to 16
};

__host__ inline int element_size(int logits_dtype) { return logits_dtype == 0 ? 4 : 2; }

__host__ inline SplitGeometry split_geometry(int64_t vocab_size, int64_t text_vocab, int64_t num_codes,
                                             int logits_dtype, const void* logits) {
  SplitGeometry g;
  const int size = element_size(logits_dtype);
  // vector_width: 16-byte loads when the logits start on a 16-byte boundary, else one element.
  g.vec = reinterpret_cast<uintptr_t>(logits) % 16 == 0 ? 16 / size : 1;
  int block_v = 256;
  if (vocab_size < 4096) {
    int pow2 = 1;
    while (pow2 < vocab_size) pow2 <<= 1;
    block_v = pow2 < 64 ? 64 : (pow2 > 256 ? 256 : pow2);
  }
  g.block_v = block_v > g.vec ? block_v : g.vec;
  const int64_t longest = (text_vocab + 1 > num_codes ? text_vocab + 1 : num_codes) + g.vec - 1;
  g.num_tiles = static_cast<int>((longest + g.block_v - 1) / g.block_v);
  g.nt = (static_cast<int64_t>(g.num_tiles) + 15) / 16 * 16;
  return g;
}

// The workspace regions, each on a 256-byte boundary; the histograms come first (the part to zero).
struct WorkspaceLayout {
  int64_t hist_n, hist_w, zero_bytes, tile_m, tile_s, tile_arg, tile_n, tile_c, row_i, row_f, cand_x, cand_j, bytes;
};

__host__ inline int64_t align256(int64_t x) { return (x + 255) / 256 * 256; }

__host__ inline WorkspaceLayout workspace_layout(int64_t batch, const SplitGeometry& g) {
  WorkspaceLayout w;
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t start = at;
    at = align256(at + bytes);
    return start;
  };
  w.hist_n = take(batch * kNumBuckets * 4);
  w.hist_w = take(batch * kNumBuckets * 8);
  w.zero_bytes = at;
  w.tile_m = take(batch * g.nt * 4);
  w.tile_s = take(batch * g.nt * 4);
  w.tile_arg = take(batch * g.nt * 4);
  w.tile_n = take(batch * g.nt * 4);
  w.tile_c = take(batch * g.nt * 8);
  w.row_i = take(batch * kRowInts * 4);
  w.row_f = take(batch * kRowFloats * 4);
  w.cand_x = take(batch * kSplitCap * 4);
  w.cand_j = take(batch * kSplitCap * 4);
  w.bytes = at;
  return w;
}

__host__ inline int64_t cdiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// mirrors _launch_split: pass 1, select, pass 2, finish, then the one-block-per-row kernel on the
// rows handed over (every other row returns at once). Five launches, no host synchronisation.
template <typename T>
cudaError_t launch_split(const Params& p, int64_t batch, const SplitGeometry& g, char* workspace,
                         cudaStream_t stream) {
  const WorkspaceLayout w = workspace_layout(batch, g);
  SplitArgs s;
  s.hist_n = reinterpret_cast<int32_t*>(workspace + w.hist_n);
  s.hist_w = reinterpret_cast<int64_t*>(workspace + w.hist_w);
  s.tile_m = reinterpret_cast<float*>(workspace + w.tile_m);
  s.tile_s = reinterpret_cast<float*>(workspace + w.tile_s);
  s.tile_arg = reinterpret_cast<int32_t*>(workspace + w.tile_arg);
  s.tile_n = reinterpret_cast<int32_t*>(workspace + w.tile_n);
  s.tile_c = reinterpret_cast<int64_t*>(workspace + w.tile_c);
  s.row_i = reinterpret_cast<int32_t*>(workspace + w.row_i);
  s.row_f = reinterpret_cast<float*>(workspace + w.row_f);
  s.cand_x = reinterpret_cast<float*>(workspace + w.cand_x);
  s.cand_j = reinterpret_cast<int32_t*>(workspace + w.cand_j);
  s.nt = g.nt;
  s.block_v = g.block_v;
  s.vec = g.vec;
  // programs_per_row in warps: up to one per tile at small batches, one per row from kTargetWarps
  // rows on; a block's kPassWarps warps share its row's tiles. The split changes speed only.
  const int64_t per_row = std::max<int64_t>(1, std::min<int64_t>(g.num_tiles, cdiv64(kTargetWarps, batch)));
  int64_t tpw = cdiv64(g.num_tiles, per_row);
  while (cdiv64(g.num_tiles, kPassWarps * tpw) > 65535) tpw *= 2;
  s.tiles_per_warp = static_cast<int>(tpw);
  s.local_hist = kPassWarps * tpw * g.block_v >= kLocalHistMinPositions ? 1 : 0;
  const dim3 grid2(static_cast<unsigned>(batch), static_cast<unsigned>(cdiv64(g.num_tiles, kPassWarps * tpw)));
  const unsigned rows = static_cast<unsigned>(batch);
  split_tiles_kernel<T><<<grid2, kPassThreads, s.local_hist ? kLocalHistBytes : 0, stream>>>(p, s);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  split_select_kernel<<<rows, 32, 0, stream>>>(p, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  split_collect_kernel<T><<<grid2, kPassThreads, 0, stream>>>(p, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  split_finish_kernel<T><<<rows, kFinishThreads, 0, stream>>>(p, s);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  Params fb = p;
  fb.modes = s.row_i;
  constrained_sample_kernel<T><<<rows, kThreads, 0, stream>>>(fb);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_rows(const Params& p, int64_t batch, cudaStream_t stream) {
  constrained_sample_kernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

__host__ inline bool layout_ok(int64_t batch, int64_t vocab_size, int64_t stride_row, int64_t text_vocab,
                               int64_t first_code, int64_t num_codes, int64_t boi_id, int64_t eoi_id,
                               int64_t eos_id) {
  // Sizes and ids that keep every index of the kernels inside int32 and inside the row.
  return batch >= 0 && batch <= INT_MAX && vocab_size >= 1 && vocab_size <= INT_MAX - 64 && stride_row >= 0 &&
         text_vocab >= 1 && text_vocab <= vocab_size && first_code >= 0 && num_codes >= 1 &&
         first_code + num_codes <= vocab_size && boi_id >= 0 && boi_id < vocab_size && eoi_id >= 0 &&
         eoi_id < vocab_size && eos_id >= 0 && eos_id < text_vocab;
}

}  // namespace seedfast_sample

// The workspace of the split sampler (method 0) for these sizes, in bytes (-1 for invalid sizes);
// *zero_bytes: the leading part the caller must zero before each call (the histograms). The
// caller allocates it (on a 256-byte boundary) and passes it to seedfast_constrained_sample.
extern "C" int64_t seedfast_constrained_sample_workspace(int64_t batch, int64_t vocab_size, int64_t text_vocab,
                                                         int64_t num_codes, int logits_dtype, const void* logits,
                                                         int64_t* zero_bytes) {
  using namespace seedfast_sample;
  if (batch < 0 || batch > INT_MAX || vocab_size < 1 || vocab_size > INT_MAX - 64 || text_vocab < 1 ||
      text_vocab > vocab_size || num_codes < 1 || num_codes > vocab_size || logits_dtype < 0 || logits_dtype > 2) {
    return -1;
  }
  const WorkspaceLayout w = workspace_layout(batch, split_geometry(vocab_size, text_vocab, num_codes, logits_dtype,
                                                                   logits));
  if (zero_bytes != nullptr) *zero_bytes = w.zero_bytes;
  return w.bytes;
}

// logits_dtype: 0 float32, 1 float16, 2 bfloat16. Per-row arguments are read at b * stride (a
// stride of 0 broadcasts one value); rng_stream is each row's random stream id (the row index
// unless the caller keys rows by request). method 0: the split sampler, with `workspace` of
// workspace_bytes from seedfast_constrained_sample_workspace (its histograms zeroed); method 1:
// the one-block-per-row pivot sampler (no workspace). Returns cudaErrorInvalidValue for bad sizes
// or a missing or short workspace; launches on `stream` and never synchronises.
extern "C" cudaError_t seedfast_constrained_sample(
    const void* logits, int logits_dtype, int64_t batch, int64_t vocab_size, int64_t stride_row,
    const void* image_pos, int pos_is_int64, const float* temperature, int64_t s_temp, const int64_t* top_k,
    int64_t s_topk, const float* top_p, int64_t s_topp, const int64_t* seed, int64_t s_seed,
    const int64_t* offset, int64_t s_off, const int64_t* rng_stream, int64_t s_stream, int64_t text_vocab,
    int64_t first_code, int64_t num_codes, int64_t boi_id, int64_t eoi_id, int64_t eos_id, int64_t codes_per_image,
    int64_t* tokens, int32_t* next_pos, int32_t* flags, int method, void* workspace, int64_t workspace_bytes,
    cudaStream_t stream) {
  using namespace seedfast_sample;
  if (!layout_ok(batch, vocab_size, stride_row, text_vocab, first_code, num_codes, boi_id, eoi_id, eos_id) ||
      logits_dtype < 0 || logits_dtype > 2 || (method != 0 && method != 1)) {
    return cudaErrorInvalidValue;
  }
  if (batch == 0) return cudaSuccess;
  Params p;
  p.logits = logits;
  p.image_pos = image_pos;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.seed = seed;
  p.offset = offset;
  p.stream = rng_stream;
  p.tokens = tokens;
  p.next_pos = next_pos;
  p.flags = flags;
  p.stride_row = stride_row;
  p.s_temp = s_temp;
  p.s_topk = s_topk;
  p.s_topp = s_topp;
  p.s_seed = s_seed;
  p.s_off = s_off;
  p.s_stream = s_stream;
  p.text_vocab = static_cast<int>(text_vocab);
  p.first_code = static_cast<int>(first_code);
  p.num_codes = static_cast<int>(num_codes);
  p.boi_id = static_cast<int>(boi_id);
  p.eoi_id = static_cast<int>(eoi_id);
  p.eos_id = static_cast<int>(eos_id);
  p.codes_per_image = codes_per_image;
  p.pos_is_int64 = pos_is_int64 != 0;
  p.modes = nullptr;
  if (method == 1) {
    switch (logits_dtype) {
      case 0:
        return launch_rows<float>(p, batch, stream);
      case 1:
        return launch_rows<__half>(p, batch, stream);
      default:
        return launch_rows<__nv_bfloat16>(p, batch, stream);
    }
  }
  const SplitGeometry g = split_geometry(vocab_size, text_vocab, num_codes, logits_dtype, logits);
  const WorkspaceLayout w = workspace_layout(batch, g);
  if (workspace == nullptr || workspace_bytes < w.bytes || reinterpret_cast<uintptr_t>(workspace) % 256 != 0 ||
      g.block_v > kMaxBlockV || g.block_v % 32 != 0) {
    return cudaErrorInvalidValue;
  }
  char* ws = static_cast<char*>(workspace);
  switch (logits_dtype) {
    case 0:
      return launch_split<float>(p, batch, g, ws, stream);
    case 1:
      return launch_split<__half>(p, batch, g, ws, stream);
    default:
      return launch_split<__nv_bfloat16>(p, batch, g, ws, stream);
  }
}
