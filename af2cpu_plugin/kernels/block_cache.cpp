// A caching allocator for torch's large CPU tensors: freed blocks are kept and handed out again.
//
// torch's CPU allocator is malloc. The engine allocates and frees megabyte
// activations thousands of times a pass, in the same few sizes in every one of
// the 48 Evoformer blocks. glibc serves them either from fresh mmaps (faulted in
// page by page again each time: slow) or from its heap (fast, but the heap
// fragments and keeps what it grew to: peak RSS went up by 0.5-1.5 GiB at 200
// residues, differently from run to run). This cache serves every block of
// 1 MiB and more from its own mappings (2 MiB aligned, transparent huge pages
// when asked) and keeps freed ones for reuse, so after the first block of a
// stack every request is a hit: no page faults and no heap growth.
//
// Its footprint stays near the peak of live memory: a request it cannot serve
// from the cache first unmaps cached blocks, least recently freed first, until
// live + cached + the new block fits within that peak plus 1/4 of it (256 MiB
// at most: deep MSA x3 in fp32, 3.01 -> 2.89 GiB peak RSS). A cached block
// serves a request up to 1/8 smaller than itself (blocks are never split).
// Smaller requests go to the allocator that was installed before (malloc).

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace af2cpu {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;  // smaller requests go to malloc
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kMaxSlack = size_t(256) << 20;  // the most cached bytes kept above the live high-water mark

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

class BlockCache final : public c10::Allocator {
 public:
  explicit BlockCache(c10::Allocator* fallback) : fallback_(fallback) {}

  void set_huge_pages(bool on) { huge_pages_ = on; }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinBytes) return fallback_->allocate(n);
    const size_t size = round_up(n, kHugePage);
    void* ptr = take(size);
    if (ptr == nullptr) ptr = map(size);
    return {ptr, ptr, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  // raw_allocate/raw_deallocate (used by some of torch's kernels for scratch space) free through this.
  c10::DeleterFnPtr raw_deleter() const override { return &BlockCache::release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  // live, peak live, cached, peak mapped bytes; hits, misses; peak live since the last reset_window_peak.
  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(live_), int64_t(peak_live_), int64_t(cached_), int64_t(peak_mapped_), int64_t(hits_),
            int64_t(misses_), int64_t(window_peak_)};
  }

  // A measurement window (the cost model's calibration: one pass's own peak). The cache's
  // sizing keeps using the peak since start.
  void reset_window_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    window_peak_ = live_;
  }

 private:
  struct Free {
    size_t size;
    void* ptr;
    std::multimap<size_t, uint64_t>::iterator by_size;
  };

  static void release(void* ptr);

  // A cached block of at least `size` bytes and at most 1/8 more, or nullptr.
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_size_.lower_bound(size);
    if (it != by_size_.end() && it->first <= size + size / 8) {
      auto entry = by_age_.find(it->second);
      void* ptr = entry->second.ptr;
      const size_t got = entry->second.size;
      by_size_.erase(it);
      by_age_.erase(entry);
      cached_ -= got;
      note_live(ptr, got);
      ++hits_;
      return ptr;
    }
    // A miss: keep the footprint (live + cached + this block) within the high-water mark of live memory plus a
    // slack, by unmapping the least recently freed blocks first. The slack keeps blocks of the sizes an Evoformer
    // block cycles through (with 1/8 of the mark, 200 residues missed 9 times a block and ran 8% slower); capped,
    // so that a long sequence's multi-GiB peak does not keep a quarter of itself besides.
    const size_t high_water = std::max(peak_live_, live_ + size);
    const size_t slack = std::min(high_water / 4, kMaxSlack);
    while (!by_age_.empty() && mapped_ + size > high_water + slack) evict_oldest();
    ++misses_;
    return nullptr;
  }

  void* map(size_t size) {
    // Over-map by a huge page and trim, so the block starts on a 2 MiB boundary (huge pages need it).
    const size_t span = size + kHugePage;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        while (!by_age_.empty()) evict_oldest();
      }
      raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK(raw != MAP_FAILED, "af2cpu block cache: out of memory mapping ", size, " bytes");
    }
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = round_up(start, kHugePage);
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = aligned + size;
    if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
    void* ptr = reinterpret_cast<void*>(aligned);
    if (huge_pages_) madvise(ptr, size, MADV_HUGEPAGE);
    std::lock_guard<std::mutex> lock(mu_);
    mapped_ += size;
    peak_mapped_ = std::max(peak_mapped_, mapped_);
    note_live(ptr, size);
    return ptr;
  }

  void give_back(void* ptr) {
    std::unique_lock<std::mutex> lock(mu_);
    auto live = sizes_.find(ptr);
    if (live == sizes_.end()) {  // a small block, raw_deallocate'd: it came from the fallback
      lock.unlock();
      fallback_->raw_deleter()(ptr);
      return;
    }
    const size_t size = live->second;
    sizes_.erase(live);
    live_ -= size;
    const uint64_t age = next_age_++;
    auto by_size = by_size_.emplace(size, age);
    by_age_.emplace(age, Free{size, ptr, by_size});
    cached_ += size;
  }

  void note_live(void* ptr, size_t size) {
    sizes_.emplace(ptr, size);
    live_ += size;
    peak_live_ = std::max(peak_live_, live_);
    window_peak_ = std::max(window_peak_, live_);
  }

  size_t evict_oldest() {
    auto oldest = by_age_.begin();
    const size_t size = oldest->second.size;
    munmap(oldest->second.ptr, size);
    by_size_.erase(oldest->second.by_size);
    by_age_.erase(oldest);
    cached_ -= size;
    mapped_ -= size;
    return size;
  }

  c10::Allocator* fallback_;
  bool huge_pages_ = false;
  std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;   // live blocks
  std::multimap<size_t, uint64_t> by_size_;   // cached blocks: size -> age
  std::map<uint64_t, Free> by_age_;           // cached blocks, least recently freed first
  uint64_t next_age_ = 0;
  size_t live_ = 0, peak_live_ = 0, cached_ = 0, mapped_ = 0, peak_mapped_ = 0, window_peak_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors it served may outlive every static destructor.
BlockCache* cache = nullptr;

void BlockCache::release(void* ptr) { cache->give_back(ptr); }

}  // namespace

// Make the cache torch's CPU allocator (once per process; later calls only update huge_pages).
void block_cache_install(bool huge_pages) {
  static std::once_flag once;
  std::call_once(once, [] {
    cache = new BlockCache(c10::GetCPUAllocator());
    c10::SetCPUAllocator(cache, /*priority=*/10);
  });
  cache->set_huge_pages(huge_pages);
}

std::vector<int64_t> block_cache_stats() {
  return cache ? cache->stats() : std::vector<int64_t>(7, 0);
}

void block_cache_reset_window_peak() {
  if (cache) cache->reset_window_peak();
}

}  // namespace af2cpu

TORCH_LIBRARY_FRAGMENT(af2cpu, m) {
  m.def("block_cache_install(bool huge_pages) -> ()", &af2cpu::block_cache_install);
  m.def("block_cache_stats() -> int[]", &af2cpu::block_cache_stats);
  m.def("block_cache_reset_window_peak() -> ()", &af2cpu::block_cache_reset_window_peak);
}
