// asa.SparseAttention on CPU: the math, independent of onnxruntime (contract: exporters/onnx/op_contract.py).
//   q (B, Hq, T, D), k/v (B, Hkv, S, D), rows (B, T, K) int32 cache slots (-1 = padding) -> out (B, Hq, T, D)
//   optional, the RoPE clamp: delta (B, T, K) int32 and rope (P, D/2, 2) float32 cos/sin: each gathered key
//   with delta != 0 is rotated (interleaved pairs, float32) by rope[delta] before its scores (delta 0: as is).
// One work item is a (b, kv head, t) triple: its Hq/Hkv query heads share the gathered key and value rows,
// which are read once per item while still in L1. Scores are kept per item (K floats per head), softmax
// is exact (max-subtracted, two passes over K scores), accumulation is float32 for both dtypes.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace asa {

struct Dims {
  int64_t B, Hq, Hkv, T, S, D, K;
  int64_t P = 0;  // rows of the RoPE clamp's table (0: no clamp)
};

// The RoPE clamp's inputs; both null without the clamp.
struct Rope {
  const int32_t* delta = nullptr;  // (B, T, K)
  const float* table = nullptr;    // (P, D/2, 2)
};

// x (D floats, interleaved pairs) rotated by cs (D/2 cos/sin pairs) into y.
inline void rotate(const float* x, const float* cs, float* y, int64_t D) {
  for (int64_t i = 0; i < D; i += 2) {
    const float c = cs[i], s = cs[i + 1], x0 = x[i], x1 = x[i + 1];
    y[i] = x0 * c - x1 * s;
    y[i + 1] = x1 * c + x0 * s;
  }
}

// IEEE half <-> float, portable (no F16C needed), round-to-nearest-even like numpy.
inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, f;
  if (exp == 0) {
    if (mant == 0) {
      f = sign;
    } else {  // subnormal half: renormalise
      int e = 113;
      while (!(mant & 0x400u)) { mant <<= 1; --e; }
      f = sign | (uint32_t(e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    f = sign | 0x7f800000u | (mant << 13);
  } else {
    f = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &f, 4);
  return out;
}

inline uint16_t float_to_half(float x) {
  uint32_t f;
  std::memcpy(&f, &x, 4);
  uint32_t sign = (f >> 16) & 0x8000u, a = f & 0x7fffffffu;
  if (a >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));  // inf, nan
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);                                     // overflow
  if (a < 0x38800000u) {                                       // below the smallest normal half
    float af;
    std::memcpy(&af, &a, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(af * 16777216.0f)));  // units of 2^-24
  }
  return uint16_t(sign | ((a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13));  // rebias exponent, round
}

struct Half {
  uint16_t bits;
};

inline void to_float(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
inline void to_float(const Half* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i].bits);
}
inline void from_float(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
inline void from_float(const float* src, Half* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i].bits = float_to_half(src[i]);
}

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float p, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += p * x[i];
}

// Empty string when rows obey the contract, else a one-line reason.
inline std::string check_rows(const int32_t* rows, const Dims& d) {
  for (int64_t bt = 0; bt < d.B * d.T; ++bt) {
    const int32_t* r = rows + bt * d.K;
    int64_t n = 0;
    for (int64_t j = 0; j < d.K; ++j) {
      if (r[j] >= d.S)
        return "plan row (b=" + std::to_string(bt / d.T) + ", t=" + std::to_string(bt % d.T) + ") names slot " +
               std::to_string(r[j]) + " but the cache holds S=" + std::to_string(d.S);
      n += r[j] >= 0;
    }
    if (n == 0)
      return "plan row (b=" + std::to_string(bt / d.T) + ", t=" + std::to_string(bt % d.T) +
             ") has no valid slot (every row needs at least one)";
  }
  return "";
}

// Empty string when every rope_delta entry indexes the table (0 <= delta < P), else a one-line reason.
inline std::string check_deltas(const int32_t* delta, const Dims& d) {
  for (int64_t i = 0; i < d.B * d.T * d.K; ++i)
    if (delta[i] < 0 || delta[i] >= d.P)
      return "rope_delta (b=" + std::to_string(i / (d.T * d.K)) + ", t=" + std::to_string(i / d.K % d.T) +
             ", j=" + std::to_string(i % d.K) + ") is " + std::to_string(delta[i]) +
             ", outside the rope table's [0, " + std::to_string(d.P) + ")";
  return "";
}

template <class T>
void attend_items(const T* q, const T* k, const T* v, const int32_t* rows, const Rope& rope, T* out,
                  const Dims& d, float scale, int64_t begin, int64_t end) {
  const int64_t g = d.Hq / d.Hkv, D = d.D, K = d.K;
  const size_t gD = size_t(g * D), gK = size_t(g * K), nD = size_t(D), nK = size_t(K);
  std::vector<float> qf(gD), acc(gD), sc(gK), kf(nD), vf(nD), kr(nD);   // per-thread scratch
  std::vector<int64_t> slots(nK), deltas(nK, 0);
  for (int64_t it = begin; it < end; ++it) {
    const int64_t t = it % d.T, bh = it / d.T, hk = bh % d.Hkv, b = bh / d.Hkv;
    const int32_t* r = rows + (b * d.T + t) * K;
    const int32_t* dl = rope.delta ? rope.delta + (b * d.T + t) * K : nullptr;
    int64_t n = 0;
    for (int64_t j = 0; j < K; ++j)
      if (r[j] >= 0) {
        if (dl) deltas[size_t(n)] = dl[j];
        slots[size_t(n++)] = r[j];
      }
    const T* kb = k + (b * d.Hkv + hk) * d.S * D;                 // (S, D) of this kv head
    const T* vb = v + (b * d.Hkv + hk) * d.S * D;
    for (int64_t gi = 0; gi < g; ++gi) {
      const T* qrow = q + ((b * d.Hq + hk * g + gi) * d.T + t) * D;
      to_float(qrow, &qf[size_t(gi * D)], D);
      for (int64_t i = 0; i < D; ++i) qf[size_t(gi * D + i)] *= scale;
    }
    for (int64_t j = 0; j < n; ++j) {                             // scores (g, n)
      const T* krow = kb + slots[size_t(j)] * D;
      const float* kp;
      if constexpr (std::is_same_v<T, float>) {
        kp = krow;
      } else {
        to_float(krow, kf.data(), D);
        kp = kf.data();
      }
      if (const int64_t dj = deltas[size_t(j)]) {                 // the RoPE clamp: a far key, turned
        rotate(kp, rope.table + dj * D, kr.data(), D);
        kp = kr.data();
      }
      for (int64_t gi = 0; gi < g; ++gi) sc[size_t(gi * K + j)] = dot(&qf[size_t(gi * D)], kp, D);
    }
    for (int64_t gi = 0; gi < g; ++gi) {                          // exact softmax over the n valid keys
      float* s = &sc[size_t(gi * K)];
      float m = s[0];
      for (int64_t j = 1; j < n; ++j) m = std::max(m, s[j]);
      float l = 0.f;
      for (int64_t j = 0; j < n; ++j) l += (s[j] = std::exp(s[j] - m));
      const float inv = 1.f / l;
      for (int64_t j = 0; j < n; ++j) s[j] *= inv;
    }
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t j = 0; j < n; ++j) {                             // out = P @ V_gathered
      const T* vrow = vb + slots[size_t(j)] * D;
      const float* vp;
      if constexpr (std::is_same_v<T, float>) {
        vp = vrow;
      } else {
        to_float(vrow, vf.data(), D);
        vp = vf.data();
      }
      for (int64_t gi = 0; gi < g; ++gi) axpy(sc[size_t(gi * K + j)], vp, &acc[size_t(gi * D)], D);
    }
    for (int64_t gi = 0; gi < g; ++gi)
      from_float(&acc[size_t(gi * D)], out + ((b * d.Hq + hk * g + gi) * d.T + t) * D, D);
  }
}

// Threads: ASA_ORT_THREADS if set, else the hardware's; none are started for small work (a decode step
// is a few microseconds of math, far less than starting a thread).
inline int thread_count(int64_t items, int64_t macs) {
  if (macs < (int64_t(1) << 19) || items < 2) return 1;
  int n = int(std::thread::hardware_concurrency());
  if (const char* e = std::getenv("ASA_ORT_THREADS")) n = std::atoi(e);
  return int(std::max<int64_t>(1, std::min<int64_t>(n, items)));
}

template <class T>
void sparse_attention(const T* q, const T* k, const T* v, const int32_t* rows, const Rope& rope, T* out,
                      const Dims& d, float scale) {
  const int64_t items = d.B * d.Hkv * d.T;
  const int nt = thread_count(items, d.B * d.Hq * d.T * d.K * d.D);
  if (nt == 1) {
    attend_items(q, k, v, rows, rope, out, d, scale, 0, items);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (items + nt - 1) / nt;
  for (int i = 1; i < nt; ++i) {
    const int64_t b = i * per, e = std::min(items, b + per);
    if (b < e) pool.emplace_back([=] { attend_items(q, k, v, rows, rope, out, d, scale, b, e); });
  }
  attend_items(q, k, v, rows, rope, out, d, scale, 0, std::min(items, per));
  for (auto& th : pool) th.join();
}

}  // namespace asa
