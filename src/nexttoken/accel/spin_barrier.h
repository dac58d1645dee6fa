// What the one-call decode steps (decode_blocks.cpp, decode_ssru.cpp) share: a spin barrier at which
// the threads of one parallel region meet between steps, and each thread's share of a task list.
#pragma once

#include <immintrin.h>

#include <atomic>
#include <cstdint>
#include <thread>

// The threads of one parallel region wait here until all of them have come (a sense-reversing
// barrier): a few hundred nanoseconds, where ending the region and starting another costs
// microseconds. A thread that has waited long gives its core away at each turn, in case the one it
// waits for is not running (more threads than cores).
class SpinBarrier {
 public:
  explicit SpinBarrier(int team) : team_(team) {}

  void wait() {
    if (team_ == 1) return;
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == team_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    } else {
      for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
        if (spins < kSpins) _mm_pause();
        else std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kSpins = 1024;  // pauses before yielding: tens of microseconds
  const int team_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

// One thread's share [first, last) of n items, for thread `tid` of `team`.
struct Share {
  int64_t first, last;
};
inline Share share(int64_t n, int tid, int team) { return {n * tid / team, n * (tid + 1) / team}; }
