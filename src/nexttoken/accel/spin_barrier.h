// What the one-call decode steps (decode_blocks.cpp, decode_ssru.cpp) share: a spin barrier at which
// the threads of one parallel region meet between steps, and each thread's share of a task list.
#pragma once

#include <ATen/Parallel.h>
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

// Runs body(barrier, tid, team) on `threads` threads, one task each, meeting at one barrier; where
// the threads do not start (one thread, or a call from inside a parallel region), the one call that
// gets every task runs body alone, as a team of one.
template <class Body>
void on_team(int64_t threads, const Body& body) {
  SpinBarrier barrier(static_cast<int>(threads));
  SpinBarrier alone(1);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    const bool by_itself = end - begin != 1;
    if (by_itself && begin != 0) return;
    if (by_itself) body(alone, 0, 1);
    else body(barrier, static_cast<int>(begin), static_cast<int>(threads));
  });
}

// One thread's share [first, last) of n items, for thread `tid` of `team`.
struct Share {
  int64_t first, last;
};
inline Share share(int64_t n, int tid, int team) { return {n * tid / team, n * (tid + 1) / team}; }
