// Hybrid batch plan generation. The algorithm (mirrored step by step in hbfast/reference.py):
//  1. shuffle item ids with Fisher-Yates (stream 0), then lay out each item's language bitmask in
//     shuffled order, so every later scan is sequential;
//  2. for batch b draw X-X vs X-Y (stream 1); an X-X batch draws its language among languages
//     that can still fill a batch, by weight (stream 2), and takes the next unused items available
//     in it; an X-Y batch takes the next unused items with >= 2 languages and draws a query
//     language (stream 3) and a different passage language (stream 4) per row;
//  3. when neither kind can be filled: stop (drop_last) or emit the leftovers as padded batches.
#include "cpu/sampler_cpu.h"

#include <mutex>
#include <stdexcept>
#include <vector>

#include "common/hbfast_common.h"
#include "common/parallel.h"

namespace hbfast {
namespace {

enum Stream : uint64_t { kPerm = 0, kKind = 1, kLang = 2, kQueryLang = 3, kPassageLang = 4 };

inline int popcount_words(const uint64_t* m, int64_t W) {
  int c = 0;
  for (int64_t w = 0; w < W; ++w) c += __builtin_popcountll(m[w]);
  return c;
}
inline bool has_lang(const uint64_t* m, int64_t l) { return (m[l >> 6] >> (l & 63)) & 1; }
// Index of the k-th set bit (0-based) of a W-word mask.
inline int64_t kth_set_bit(const uint64_t* m, int64_t W, int64_t k) {
  for (int64_t w = 0; w < W; ++w) {
    uint64_t x = m[w];
    int c = __builtin_popcountll(x);
    if (k >= c) {
      k -= c;
      continue;
    }
    for (; k > 0; --k) x &= x - 1;
    return w * 64 + __builtin_ctzll(x);
  }
  return -1;
}

struct Planner {
  int64_t N, L, W, G;
  const double* weights;
  double alpha;
  uint64_t key;
  std::vector<int64_t> ids;     // [N] item id at shuffled position p
  std::vector<uint64_t> masks;  // [N, W] language bitmask at shuffled position p
  std::vector<uint8_t> used;    // [N]
  std::vector<int64_t> lang_left;  // [L] unused items available in each language
  int64_t cross_left = 0;          // unused items with >= 2 languages
  std::vector<int64_t> cursor;     // [L + 1]: per-language scan position, then the X-Y one
  int64_t* items;
  int32_t* qlang;
  int32_t* plang;
  uint8_t* mono;
  int64_t max_batches, nb = 0;

  const uint64_t* mask(int64_t p) const { return masks.data() + p * W; }

  void take(int64_t p) {
    used[p] = 1;
    const uint64_t* m = mask(p);
    int c = 0;
    for (int64_t w = 0; w < W; ++w)
      for (uint64_t x = m[w]; x; x &= x - 1, ++c) --lang_left[w * 64 + __builtin_ctzll(x)];
    if (c >= 2) --cross_left;
  }

  int64_t* new_batch(bool is_mono) {
    if (nb >= max_batches) throw std::runtime_error("hybrid_batches: output buffer too small");
    int64_t* row = items + nb * G;
    for (int64_t r = 0; r < G; ++r) row[r] = -1, qlang[nb * G + r] = -1, plang[nb * G + r] = -1;
    mono[nb] = is_mono;
    return row;
  }

  void put_mono(int64_t r, int64_t p, int64_t l) {
    items[nb * G + r] = ids[p];
    qlang[nb * G + r] = plang[nb * G + r] = static_cast<int32_t>(l);
  }

  void put_cross(int64_t r, int64_t p) {
    const uint64_t* m = mask(p);
    int64_t k = popcount_words(m, W);
    uint64_t row = static_cast<uint64_t>(nb * G + r);
    int64_t a = rng_bounded(rng_draw(key, kQueryLang, row), k);
    int64_t c = rng_bounded(rng_draw(key, kPassageLang, row), k - 1);
    if (c >= a) ++c;
    items[nb * G + r] = ids[p];
    qlang[nb * G + r] = static_cast<int32_t>(kth_set_bit(m, W, a));
    plang[nb * G + r] = static_cast<int32_t>(kth_set_bit(m, W, c));
  }

  bool lang_can_fill(int64_t l) const { return weights[l] > 0 && lang_left[l] >= G; }

  void full_mono_batch(int64_t l) {
    new_batch(true);
    int64_t& p = cursor[l];
    for (int64_t r = 0; r < G; ++p) {
      if (!used[p] && has_lang(mask(p), l)) {
        take(p);
        put_mono(r++, p, l);
      }
    }
    ++nb;
  }

  void full_cross_batch() {
    new_batch(false);
    int64_t& p = cursor[L];
    for (int64_t r = 0; r < G; ++p) {
      if (!used[p] && popcount_words(mask(p), W) >= 2) {
        take(p);
        put_cross(r++, p);
      }
    }
    ++nb;
  }

  // Leftovers after the last full batch, in shuffled order, as padded batches.
  void tail() {
    if (alpha < 1.0) {
      int64_t r = G;
      for (int64_t p = 0; p < N; ++p) {
        if (used[p] || popcount_words(mask(p), W) < 2) continue;
        if (r == G) new_batch(false), r = 0;
        take(p);
        put_cross(r++, p);
        if (r == G) ++nb;
      }
      if (r < G) ++nb;
    }
    if (alpha > 0.0) {
      for (int64_t l = 0; l < L; ++l) {
        if (weights[l] <= 0) continue;
        int64_t r = G;
        for (int64_t p = 0; p < N; ++p) {
          if (used[p] || !has_lang(mask(p), l)) continue;
          if (r == G) new_batch(true), r = 0;
          take(p);
          put_mono(r++, p, l);
          if (r == G) ++nb;
        }
        if (r < G) ++nb;
      }
    }
  }

  // Fisher-Yates on ids; the swap targets depend only on counters, so they are computed ahead and
  // prefetched. For L <= 32 each slot carries (mask << 32 | id), so the shuffle also moves the masks.
  template <class Slot>
  void shuffle(Slot* slots) {
    constexpr int64_t kAhead = 16;
    int64_t target[kAhead];
    auto swap_target = [&](int64_t i) {
      return static_cast<int64_t>(rng_bounded(rng_draw(key, kPerm, static_cast<uint64_t>(i)), static_cast<uint64_t>(i + 1)));
    };
    for (int64_t i = N - 1; i > 0 && i > N - 1 - kAhead; --i) target[i % kAhead] = swap_target(i);
    for (int64_t i = N - 1; i > 0; --i) {
      int64_t j = target[i % kAhead];
      if (i - kAhead > 0) {
        int64_t next = swap_target(i - kAhead);
        target[(i - kAhead) % kAhead] = next;
        __builtin_prefetch(slots + next, 1);
      }
      std::swap(slots[i], slots[j]);
    }
  }

  void lay_out(const uint8_t* availability) {
    ids.resize(N);
    masks.assign(N * W, 0);
    if (L <= 32) {
      std::vector<uint64_t> slots(N);
      parallel_for(N, 1 << 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const uint8_t* a = availability + i * L;
          uint64_t m = 0;
          for (int64_t l = 0; l < L; ++l) m |= static_cast<uint64_t>(a[l] != 0) << l;
          slots[i] = (m << 32) | static_cast<uint64_t>(i);
        }
      });
      shuffle(slots.data());
      parallel_for(N, 1 << 16, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) ids[p] = static_cast<int64_t>(slots[p] & 0xFFFFFFFFULL), masks[p] = slots[p] >> 32;
      });
      return;
    }
    for (int64_t i = 0; i < N; ++i) ids[i] = i;
    shuffle(ids.data());
    parallel_for(N, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const uint8_t* a = availability + ids[p] * L;
        uint64_t* m = masks.data() + p * W;
        for (int64_t l = 0; l < L; ++l) m[l >> 6] |= static_cast<uint64_t>(a[l] != 0) << (l & 63);
      }
    });
  }

  void run(const uint8_t* availability, bool drop_last) {
    lay_out(availability);
    used.assign(N, 0);
    lang_left.assign(L, 0);
    cross_left = availability_counts_cpu(availability, N, L, lang_left.data());  // parallel, shared with validation
    cursor.assign(L + 1, 0);

    for (uint64_t b = 0;; ++b) {
      bool mono_ok = false;
      if (alpha > 0.0)
        for (int64_t l = 0; l < L && !mono_ok; ++l) mono_ok = lang_can_fill(l);
      bool cross_ok = alpha < 1.0 && cross_left >= G;
      if (!mono_ok && !cross_ok) break;
      bool want_mono = rng_unit(rng_draw(key, kKind, b)) < alpha;
      if (want_mono && !mono_ok) want_mono = false;
      if (!want_mono && !cross_ok) want_mono = true;
      if (want_mono) {
        double total = 0;
        for (int64_t l = 0; l < L; ++l)
          if (lang_can_fill(l)) total += weights[l];
        double target = rng_unit(rng_draw(key, kLang, b)) * total, acc = 0;
        int64_t chosen = -1;
        for (int64_t l = 0; l < L; ++l) {
          if (!lang_can_fill(l)) continue;
          chosen = l;
          acc += weights[l];
          if (acc > target) break;
        }
        full_mono_batch(chosen);
      } else {
        full_cross_batch();
      }
    }
    if (!drop_last) tail();
  }
};

}  // namespace

int64_t availability_counts_cpu(const uint8_t* availability, int64_t N, int64_t L, int64_t* counts) {
  std::mutex lock;
  std::fill(counts, counts + L, 0);
  int64_t n_multi = 0;
  parallel_for(N, 1 << 16, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> local(L, 0);
    int64_t multi = 0;
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* a = availability + i * L;
      int64_t c = 0;
      for (int64_t l = 0; l < L; ++l) {
        int64_t bit = a[l] != 0;
        local[l] += bit;
        c += bit;
      }
      multi += c >= 2;
    }
    std::lock_guard<std::mutex> guard(lock);
    for (int64_t l = 0; l < L; ++l) counts[l] += local[l];
    n_multi += multi;
  });
  return n_multi;
}

int64_t hybrid_batches_cpu(const uint8_t* availability, int64_t N, int64_t L, const double* weights,
                           double alpha, int64_t batch, uint64_t seed, uint64_t epoch, bool drop_last,
                           int64_t* items, int32_t* query_lang, int32_t* passage_lang, uint8_t* mono,
                           int64_t max_batches) {
  Planner plan;
  plan.N = N;
  plan.L = L;
  plan.W = (L + 63) / 64;
  plan.G = batch;
  plan.weights = weights;
  plan.alpha = alpha;
  plan.key = rng_key(seed, epoch);
  plan.items = items;
  plan.qlang = query_lang;
  plan.plang = passage_lang;
  plan.mono = mono;
  plan.max_batches = max_batches;
  plan.run(availability, drop_last);
  return plan.nb;
}

}  // namespace hbfast
