// Grammar-constrained temperature / top-k / top-p sampling: the CUDA C++ twin of
// kernels/constrained_sample.py (seedfast.kernels.constrained_sample), one thread block per row.
//
// Pure CUDA + CUB, no torch headers: the C entry point seedfast_constrained_sample() takes raw
// device pointers, sizes, strides and a stream, so CI compiles this file with nvcc alone and the
// torch binding (constrained_sample_binding.cpp) stays a thin shim.
//
// A row is read as its "virtual row": the contiguous id range its grammar state allows (text ids,
// or the codes) followed, for text rows, by the <img> logit, which lies above every text id, so
// the virtual order is the id order. Passes (each a block-strided sweep; the stats and pivot
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

__device__ __forceinline__ float weight(float x, float m, float scale) { return exp2f((x - m) * scale); }

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
    const float scale = fminf((1.0f / temp) * kLog2e, FLT_MAX);
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

template <typename T>
cudaError_t launch_typed(const Params& p, int64_t batch, cudaStream_t stream) {
  constrained_sample_kernel<T><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace seedfast_sample

// logits_dtype: 0 float32, 1 float16, 2 bfloat16. Per-row arguments are read at b * stride (a
// stride of 0 broadcasts one value); rng_stream is each row's random stream id (the row index
// unless the caller keys rows by request). Returns cudaErrorInvalidValue for bad sizes; launches on
// `stream` and never synchronises.
extern "C" cudaError_t seedfast_constrained_sample(
    const void* logits, int logits_dtype, int64_t batch, int64_t vocab_size, int64_t stride_row,
    const void* image_pos, int pos_is_int64, const float* temperature, int64_t s_temp, const int64_t* top_k,
    int64_t s_topk, const float* top_p, int64_t s_topp, const int64_t* seed, int64_t s_seed,
    const int64_t* offset, int64_t s_off, const int64_t* rng_stream, int64_t s_stream, int64_t text_vocab,
    int64_t first_code, int64_t num_codes, int64_t boi_id, int64_t eoi_id, int64_t eos_id, int64_t codes_per_image,
    int64_t* tokens, int32_t* next_pos, int32_t* flags, cudaStream_t stream) {
  using namespace seedfast_sample;
  if (batch < 0 || batch > INT_MAX || vocab_size > INT_MAX || first_code + num_codes > vocab_size ||
      boi_id >= vocab_size || eoi_id >= vocab_size || text_vocab > vocab_size || eos_id >= text_vocab) {
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
  switch (logits_dtype) {
    case 0:
      return launch_typed<float>(p, batch, stream);
    case 1:
      return launch_typed<__half>(p, batch, stream);
    case 2:
      return launch_typed<__nv_bfloat16>(p, batch, stream);
    default:
      return cudaErrorInvalidValue;
  }
}
