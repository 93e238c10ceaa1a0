// The CUDA emulator's execution model: launches, blocks of fibers, barriers, warp collectives,
// the m16n8k16 tensor-core product, ldmatrix and cp.async, and the checks on every memory access
// a kernel makes.
//
// Execution. A launch runs its blocks one after another on the calling OS thread, in an order
// set by the schedule. A block's threads are fibers (switch_x86_64.S) with stacks of their own.
// A thread runs until it reaches __syncthreads, a warp collective (__shfl_*_sync, mma) or its
// end; the scheduler then picks the next runnable thread: in index order (round-robin), in
// reverse, or at random from a seeded generator. A barrier releases when every thread of the
// block waits at the same call site; a collective completes when every lane of its mask waits at
// the same call site, and then computes every lane's result at once.
//
// Checks, each reported with the kernel, block, thread and source line, after which the launch
// stops and its error is returned (cudaErrorLaunchFailure, or the configuration errors a GPU
// gives at launch):
//  - launch limits: threads per block, block and grid dimensions, static + dynamic shared memory
//    over 48 KiB without cudaFuncSetAttribute's opt-in, or over the device's maximum;
//  - barriers: threads waiting at different __syncthreads call sites; a barrier that a thread
//    which has exited will never reach; a deadlock (prints where every thread stands);
//  - collectives: a lane outside its own mask, masks naming lanes that do not exist, lanes of
//    one mask at different call sites or with different masks, a lane that exited;
//  - memory (kernel sources are compiled with g++'s -fsanitize=thread instrumentation, whose
//    per-access hooks are defined here instead of libtsan): every global access must lie inside
//    one device allocation, every shared access inside the launch's dynamic shared buffer or one
//    of the kernel's static __shared__ variables, and 2/4/8/16-byte accesses must be naturally
//    aligned. Anything else (a host pointer, a freed buffer) is an error;
//  - shared-memory races: two different threads touching the same shared byte in one barrier
//    interval, at least one of them writing; and reads of shared bytes that nothing in the block
//    has written. Optionally (LTRAIN_EMU_GLOBAL_RACES=1) the same across the blocks of a launch
//    for global memory.
//  - ldmatrix (a warp collective): each row address must be 16-byte aligned shared memory, and
//    each row is read as a shared-memory read of the lane that gave its address;
//  - cp.async (per thread, PTX ISA group semantics): the global source is checked and counted
//    at issue; the shared destination is written only when a cp.async.wait_group / wait_all
//    retires the copy's group (as a write of the issuing thread then, so another thread must
//    pass a __syncthreads after the wait before reading it). Until then any access to those
//    bytes is an error (the kernel would see old contents), and so is a copy still pending when
//    its thread exits.
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu.h"
#include "emu_control.h"
#include "emu_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define LTRAIN_EMU_ASAN 1
#else
#define LTRAIN_EMU_ASAN 0
#endif

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch is written for x86-64 (tests/cuda_emu/switch_x86_64.S)"
#endif

extern "C" void emu_switch(void** save_sp, void* load_sp);
extern "C" void emu_fiber_start();
// The sanitizer runtime's symbolizer, when the build links one (ASan, UBSan).
extern "C" void __sanitizer_symbolize_pc(void* pc, const char* fmt, char* out, size_t size)
    __attribute__((weak));

namespace cuda_emu {

ThreadCoords* g_coords = nullptr;

namespace {

constexpr size_t kStackBytes = size_t(256) << 10;
constexpr size_t kGuardBytes = 4096;

// ---- symbols -----------------------------------------------------------------------------------

std::string demangle(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  return out;
}

// The main executable's symbol table (.symtab): functions by address, and static variables
// (mangled "_ZZ<function>E<name>": a kernel's static __shared__ variables).
struct SymbolTable {
  struct Sym {
    uintptr_t addr;
    size_t size;
    std::string name;
  };
  std::vector<Sym> funcs;    // sorted by addr
  std::vector<Sym> statics;  // function-local statics
  bool loaded = false;

  void load() {
    if (loaded) return;
    loaded = true;
    uintptr_t bias = 0;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) {
          *static_cast<uintptr_t*>(data) = info->dlpi_addr;
          return 1;  // the first object is the main program
        },
        &bias);
    const int fd = open("/proc/self/exe", O_RDONLY);
    if (fd < 0) return;
    struct stat st {};
    fstat(fd, &st);
    void* map = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return;
    const auto* base = static_cast<const char*>(map);
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; ++i) {
      if (sh[i].sh_type != SHT_SYMTAB) continue;
      const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
      const char* strtab = base + sh[sh[i].sh_link].sh_offset;
      const size_t n = sh[i].sh_size / sizeof(Elf64_Sym);
      for (size_t j = 0; j < n; ++j) {
        const Elf64_Sym& s = syms[j];
        if (s.st_shndx == SHN_UNDEF || s.st_value == 0) continue;
        const char* name = strtab + s.st_name;
        const int type = ELF64_ST_TYPE(s.st_info);
        if (type == STT_FUNC) funcs.push_back({bias + s.st_value, s.st_size, name});
        else if (type == STT_OBJECT && std::strncmp(name, "_ZZ", 3) == 0)
          statics.push_back({bias + s.st_value, s.st_size, name});
      }
    }
    munmap(map, size_t(st.st_size));
    std::sort(funcs.begin(), funcs.end(), [](const Sym& a, const Sym& b) { return a.addr < b.addr; });
  }

  const Sym* function_at(uintptr_t addr) {
    load();
    auto it = std::upper_bound(funcs.begin(), funcs.end(), addr,
                               [](uintptr_t a, const Sym& s) { return a < s.addr; });
    if (it == funcs.begin()) return nullptr;
    --it;
    return addr < it->addr + std::max<size_t>(it->size, 1) ? &*it : nullptr;
  }
};

SymbolTable& symbols() {
  static auto* t = new SymbolTable;  // never destroyed, like every emulator registry
  return *t;
}

// "file:line in function" for a return address inside kernel code.
std::string where(const void* pc) {
  if (!pc) return "?";
  void* call = static_cast<char*>(const_cast<void*>(pc)) - 1;  // the call instruction
  if (__sanitizer_symbolize_pc) {
    // one null-terminated string per frame, innermost (inlined) first, then an empty string
    char buf[4096] = {0};
    __sanitizer_symbolize_pc(call, "%s:%l in %f", buf, sizeof(buf) - 1);
    std::string out;
    for (const char* f = buf; *f && f < buf + sizeof(buf) - 1; f += std::strlen(f) + 1) {
      if (std::strncmp(f, "<null>", 6) == 0) continue;
      if (!out.empty()) out += " <- ";
      out += f;
    }
    if (!out.empty()) return out;
  }
  Dl_info info{};
  std::ostringstream os;
  if (dladdr(call, &info) && info.dli_fname) {
    char cmd[1024];
    std::snprintf(cmd, sizeof(cmd), "addr2line -C -f -i -e '%s' 0x%" PRIxPTR " 2>/dev/null", info.dli_fname,
                  reinterpret_cast<uintptr_t>(call) - reinterpret_cast<uintptr_t>(info.dli_fbase));
    if (FILE* f = popen(cmd, "r")) {
      char fn[512] = {0}, loc[512] = {0};
      while (fgets(fn, sizeof(fn), f) && fgets(loc, sizeof(loc), f)) {  // innermost frame first
        fn[std::strcspn(fn, "\n")] = 0;
        loc[std::strcspn(loc, "\n")] = 0;
        if (!os.str().empty()) os << " <- ";
        os << loc << " in " << fn;
      }
      pclose(f);
      if (!os.str().empty()) return os.str();
    }
  }
  os << pc;
  return os.str();
}

// ---- per-kernel facts --------------------------------------------------------------------------

struct StaticShared {
  uintptr_t addr;
  size_t size;
  std::string name;
};

struct KernelInfo {
  std::string name;  // demangled, without the parameter list's noise where possible
  std::vector<StaticShared> shared;
  size_t static_shared_bytes = 0;
  int max_dynamic_shared = -1;  // cudaFuncAttributeMaxDynamicSharedMemorySize; -1: not set
};

std::map<const void*, KernelInfo>& kernels() {
  static auto* k = new std::map<const void*, KernelInfo>;
  return *k;
}

KernelInfo& kernel_info(const void* fn) {
  auto it = kernels().find(fn);
  if (it != kernels().end()) return it->second;
  KernelInfo info;
  const SymbolTable::Sym* f = symbols().function_at(reinterpret_cast<uintptr_t>(fn));
  if (f) {
    info.name = demangle(f->name.c_str());
    if (f->name.compare(0, 2, "_Z") == 0) {
      const std::string prefix = "_ZZ" + f->name.substr(2) + "E";
      for (const auto& s : symbols().statics)
        if (s.name.compare(0, prefix.size(), prefix) == 0) {
          info.shared.push_back({s.addr, s.size, demangle(s.name.c_str())});
          info.static_shared_bytes += s.size;
        }
    }
  } else {
    std::ostringstream os;
    os << "kernel@" << fn;
    info.name = os.str();
  }
  return kernels().emplace(fn, std::move(info)).first->second;
}

// ---- threads and the scheduler -----------------------------------------------------------------

enum class State : uint8_t { kRunnable, kBarrier, kCollective, kExited };

enum class Coll : uint8_t { kShflXor, kShflIdx, kShflDown, kShflUp, kBallot, kSyncwarp, kMma, kLdmatrix };
const char* coll_name(Coll c) {
  switch (c) {
    case Coll::kShflXor: return "__shfl_xor_sync";
    case Coll::kShflIdx: return "__shfl_sync";
    case Coll::kShflDown: return "__shfl_down_sync";
    case Coll::kShflUp: return "__shfl_up_sync";
    case Coll::kBallot: return "__ballot_sync";
    case Coll::kSyncwarp: return "__syncwarp";
    case Coll::kMma: return "mma.sync.m16n8k16";
    case Coll::kLdmatrix: return "ldmatrix.sync.m8n8";
  }
  return "?";
}

struct MmaIn {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

struct StaticShared;

// A cp.async copy issued and not yet performed: its 16 bytes were read from global memory at
// issue; they land in shared memory when a cp.async.wait_group / wait_all retires its group.
struct AsyncCopy {
  unsigned char* dst = nullptr;
  size_t shadow = 0;                     // shadow index of dst
  const StaticShared* var = nullptr;     // the static __shared__ variable, or null (dynamic)
  size_t var_offset = 0;
  uint64_t group = 0;                    // 0: not committed yet
  const void* pc = nullptr;              // where it was issued
  unsigned char data[16] = {};
};

struct Thread {
  void* sp = nullptr;
  char* stack_lo = nullptr;  // usable stack (above the guard page)
  bool dirty = false;        // abandoned mid-run by a failed launch
  ThreadCoords coords{};
  int tid = 0, lane = 0, warp = 0;
  State state = State::kRunnable;
  const void* pc = nullptr;  // the barrier or collective it waits at
  Coll coll = Coll::kShflXor;
  unsigned mask = 0;
  int arg = 0, width = 32;
  uint64_t in = 0;           // shuffle payload (bits of float, double, int)
  uint64_t out = 0;
  const MmaIn* mma_in = nullptr;
  float* mma_out = nullptr;
  // ldmatrix: the row this lane addressed (read when it arrived), and its destination registers
  uint32_t ld_row[4] = {};
  uint32_t* ld_out = nullptr;
  int ld_num = 0;
  bool ld_trans = false;
  // cp.async: this thread's copies not yet performed (issue order), and its next group number
  std::vector<AsyncCopy> async;
  uint64_t next_group = 1;
};

// One byte of shared memory: the last write and read, by epoch (barrier interval; global
// counters, so nothing is reset between blocks).
struct ShadowByte {
  uint64_t w_epoch = 0, r_epoch = 0;
  const void* w_pc = nullptr;
  const void* r_pc = nullptr;
  int16_t writer = -1, reader = -1;  // reader -2: two or more threads read in r_epoch
  int16_t async_writer = -1;         // the thread with a cp.async into this byte not yet waited for
};

// One byte of global memory in the optional race check: which block touched it in this launch
// (and whether it wrote), and the last write and read by epoch, as for shared memory.
struct GlobalShadow {
  int32_t block = -1;
  bool written = false;
  int16_t writer = -1, reader = -1;  // reader -2: several threads read in r_epoch
  uint64_t w_epoch = 0, r_epoch = 0;
  const void* pc = nullptr;    // the block's last access
  const void* w_pc = nullptr;
  const void* r_pc = nullptr;
};

// The collective a warp's lanes are gathering at (one at a time per warp).
struct WarpState {
  int arrived = 0;
  const void* pc = nullptr;
  unsigned mask = 0;
  Coll kind = Coll::kShflXor;
  unsigned exited = 0;  // lanes that have exited
};

struct Launch {
  KernelInfo* info = nullptr;
  dim3 grid, block;
  size_t dyn_bytes = 0;
  std::vector<unsigned char> dyn;  // dynamic shared memory, exactly dyn_bytes
  int nthreads = 0;
  int live = 0, exited = 0, at_barrier = 0;
  const void* barrier_pc = nullptr;
  int block_linear = 0;
  uint64_t block_first_epoch = 0;
  bool failed = false;
  std::string error;
  // shadow: dynamic shared [0, dyn_bytes) then each static variable
  std::vector<ShadowByte> shadow;
  std::vector<size_t> static_offset;  // shadow index of each static variable
  std::unordered_map<uintptr_t, GlobalShadow> global_shadow;
  uint64_t mma_count = 0, bytes_read = 0, bytes_written = 0;
  std::pair<uintptr_t, size_t> param_ranges[2];  // the launch's closure and converted arguments
  std::vector<WarpState> warps;
};

std::vector<Thread> g_threads;   // the block's threads; stacks kept across launches
Thread* g_cur = nullptr;
Launch* g_launch = nullptr;
void* g_sched_sp = nullptr;
[[maybe_unused]] const void* g_sched_stack_bottom = nullptr;
[[maybe_unused]] size_t g_sched_stack_size = 0;
uint64_t g_epoch = 1;
std::mutex g_launch_mutex;

Schedule g_schedule = Schedule::kRoundRobin;
uint64_t g_seed = 1;
std::mt19937_64 g_rng(1);
bool g_schedule_from_env = false;
bool g_global_races = false;
bool g_quiet = false;
LaunchStats g_last_stats, g_total_stats;

void init_from_env() {
  if (g_schedule_from_env) return;
  g_schedule_from_env = true;
  if (const char* s = std::getenv("LTRAIN_EMU_SCHEDULE")) {
    std::string v = s;
    if (v == "round-robin" || v == "rr") g_schedule = Schedule::kRoundRobin;
    else if (v == "reverse") g_schedule = Schedule::kReverse;
    else if (v.rfind("random", 0) == 0) {
      g_schedule = Schedule::kRandom;
      if (v.size() > 7 && v[6] == ':') g_seed = std::strtoull(v.c_str() + 7, nullptr, 10);
      g_rng.seed(g_seed);
    } else {
      std::fprintf(stderr, "cuda_emu: LTRAIN_EMU_SCHEDULE=%s: use round-robin, reverse, random or random:SEED\n", s);
      std::exit(2);
    }
  }
  if (const char* g = std::getenv("LTRAIN_EMU_GLOBAL_RACES")) g_global_races = std::atoi(g) != 0;
  if (const char* q = std::getenv("LTRAIN_EMU_QUIET")) g_quiet = std::atoi(q) != 0;
}

std::string dim_str(uint3 d) {
  std::ostringstream os;
  os << "(" << d.x << "," << d.y << "," << d.z << ")";
  return os.str();
}
std::string dim_str(dim3 d) { return dim_str(uint3{d.x, d.y, d.z}); }

std::string thread_str(const Thread& t) {
  std::ostringstream os;
  os << "thread " << dim_str(t.coords.thread_idx) << " (warp " << t.warp << " lane " << t.lane << ")";
  return os.str();
}

std::string block_prefix() {
  std::ostringstream os;
  os << "kernel " << g_launch->info->name << " block " << dim_str(g_cur ? g_cur->coords.block_idx : uint3{0, 0, 0});
  return os.str();
}

// ---- fibers ------------------------------------------------------------------------------------

void fiber_main(Thread* t);

void prepare_fiber(Thread& t, void (*entry)(Thread*)) {
  if (!t.stack_lo) {
    void* mem = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
      std::fprintf(stderr, "cuda_emu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(mem, kGuardBytes, PROT_NONE);  // an overflow faults instead of corrupting
    t.stack_lo = static_cast<char*>(mem) + kGuardBytes;
  }
#if LTRAIN_EMU_ASAN
  if (t.dirty) __asan_unpoison_memory_region(t.stack_lo, kStackBytes);
#endif
  t.dirty = false;
  uintptr_t top = reinterpret_cast<uintptr_t>(t.stack_lo + kStackBytes) & ~uintptr_t(15);
  auto* sp = reinterpret_cast<uint64_t*>(top) - 8;
  sp[0] = 0x1F80ull | (0x037Full << 32);  // MXCSR (all exceptions masked), x87 control word
  sp[1] = 0;                               // r15
  sp[2] = 0;                               // r14
  sp[3] = reinterpret_cast<uint64_t>(entry);  // r13
  sp[4] = reinterpret_cast<uint64_t>(&t);     // r12
  sp[5] = 0;                                  // rbx
  sp[6] = 0;                                  // rbp
  sp[7] = reinterpret_cast<uint64_t>(&emu_fiber_start);
  t.sp = sp;
}

void switch_to(Thread& t) {
  g_cur = &t;
  g_coords = &t.coords;
#if LTRAIN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t.stack_lo, kStackBytes);
  emu_switch(&g_sched_sp, t.sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  emu_switch(&g_sched_sp, t.sp);
#endif
  g_cur = nullptr;
}

// From a fiber back to the scheduler; returns when the scheduler runs this thread again.
void yield() {
  Thread* t = g_cur;
#if LTRAIN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, g_sched_stack_bottom, g_sched_stack_size);
  emu_switch(&t->sp, g_sched_sp);
  __sanitizer_finish_switch_fiber(fake, &g_sched_stack_bottom, &g_sched_stack_size);
#else
  emu_switch(&t->sp, g_sched_sp);
#endif
}

[[noreturn]] void fail(const std::string& msg) {
  if (!g_launch->failed) {
    g_launch->failed = true;
    g_launch->error = msg;
  }
  for (;;) yield();  // the scheduler never resumes a thread of a failed launch
}

void release_barrier() {
  for (int i = 0; i < g_launch->nthreads; ++i)
    if (g_threads[i].state == State::kBarrier) g_threads[i].state = State::kRunnable;
  g_launch->at_barrier = 0;
  g_launch->barrier_pc = nullptr;
  ++g_epoch;
}

// After a thread exits: a barrier or collective that now cannot complete is an error.
void check_after_exit(Thread& me) {
  Launch& L = *g_launch;
  if (L.at_barrier > 0 && L.at_barrier == L.live) {
    std::ostringstream os;
    os << block_prefix() << ": " << thread_str(me) << " exited while " << L.at_barrier
       << " threads wait at __syncthreads at " << where(L.barrier_pc)
       << "; a barrier must be reached by every thread of the block";
    fail(os.str());
  }
  WarpState& w = L.warps[size_t(me.warp)];
  w.exited |= 1u << me.lane;
  if (w.arrived > 0 && (w.mask >> me.lane & 1u)) {
    const int base = me.warp * 32;
    int other = 0;
    while (g_threads[size_t(base + other)].state != State::kCollective) ++other;
    std::ostringstream os;
    os << block_prefix() << ": " << thread_str(me) << " exited, but lane " << other << " waits for it at "
       << coll_name(w.kind) << " with mask 0x" << std::hex << w.mask << std::dec << " at " << where(w.pc);
    fail(os.str());
  }
}

void (*g_body)(void*) = nullptr;
void* g_closure = nullptr;

void fiber_main(Thread* t) {
#if LTRAIN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_stack_bottom, &g_sched_stack_size);
#endif
  g_body(g_closure);
  if (!t->async.empty()) {
    const AsyncCopy& c = t->async.front();
    std::ostringstream os;
    os << block_prefix() << ": " << thread_str(*t) << " exited with " << t->async.size()
       << " cp.async cop" << (t->async.size() == 1 ? "y" : "ies") << " not waited for, the first issued at "
       << where(c.pc) << (c.group == 0 ? " and never committed" : "")
       << " (a cp.async.wait_group / wait_all must retire every copy before the thread ends)";
    fail(os.str());
  }
  Launch& L = *g_launch;
  t->state = State::kExited;
  --L.live;
  ++L.exited;
  check_after_exit(*t);
  for (;;) yield();
}

void arrive_barrier(const void* pc) {
  Launch& L = *g_launch;
  Thread& me = *g_cur;
  if (L.at_barrier > 0 && L.barrier_pc != pc) {
    std::ostringstream os;
    os << block_prefix() << ": divergent __syncthreads: " << thread_str(me) << " waits at " << where(pc)
       << ", other threads at " << where(L.barrier_pc);
    fail(os.str());
  }
  if (L.at_barrier == 0) L.barrier_pc = pc;
  me.state = State::kBarrier;
  me.pc = pc;
  ++L.at_barrier;
  if (L.at_barrier == L.live) {
    if (L.exited > 0) {
      std::ostringstream os;
      os << block_prefix() << ": " << L.exited << " thread(s) exited, and the others wait at __syncthreads at "
         << where(pc) << ", which the exited threads never reach";
      fail(os.str());
    }
    release_barrier();
  }
  yield();
}

uint64_t shfl_result(const Thread& me, const Thread* lanes) {
  const int w = me.width;
  const int seg = me.lane / w * w;  // first lane of this lane's segment
  int src = me.lane;
  switch (me.coll) {
    case Coll::kShflXor: src = me.lane ^ me.arg; if (src >= seg + w) src = me.lane; break;
    case Coll::kShflIdx: src = seg + (me.arg % w); break;
    case Coll::kShflDown: src = me.lane + me.arg; if (src >= seg + w) src = me.lane; break;
    case Coll::kShflUp: src = me.lane - me.arg; if (src < seg) src = me.lane; break;
    default: break;
  }
  return lanes[src].in;
}

void complete_mma(Thread* lanes);
void complete_ldmatrix(Thread* lanes);

// A warp collective: waits until every lane of `mask` has arrived at the same call site, then
// computes all of their results.
void arrive_collective(Coll kind, const void* pc, unsigned mask, int arg, int width) {
  Launch& L = *g_launch;
  Thread& me = *g_cur;
  const int base = me.warp * 32;
  const int lanes_here = std::min(32, L.nthreads - base);
  WarpState& w = L.warps[size_t(me.warp)];
  if (!(mask >> me.lane & 1u)) {
    std::ostringstream os;
    os << block_prefix() << ": " << thread_str(me) << " calls " << coll_name(kind) << " at " << where(pc)
       << " with mask 0x" << std::hex << mask << std::dec << ", which does not include its own lane";
    fail(os.str());
  }
  if (lanes_here < 32 && (mask >> lanes_here) != 0) {
    std::ostringstream os;
    os << block_prefix() << ": " << coll_name(kind) << " at " << where(pc) << " with mask 0x" << std::hex
       << mask << std::dec << " names lanes that do not exist (warp " << me.warp << " has " << lanes_here
       << " threads)";
    fail(os.str());
  }
  if (kind != Coll::kMma && kind != Coll::kLdmatrix && kind != Coll::kBallot && kind != Coll::kSyncwarp &&
      (width <= 0 || width > 32 || (width & (width - 1)) != 0)) {
    std::ostringstream os;
    os << block_prefix() << ": " << coll_name(kind) << " at " << where(pc) << " with width " << width
       << " (a power of two up to 32)";
    fail(os.str());
  }
  if (w.exited & mask) {
    std::ostringstream os;
    os << block_prefix() << ": " << thread_str(me) << " waits at " << coll_name(kind) << " at " << where(pc)
       << " for lane " << __builtin_ctz(w.exited & mask) << ", which has exited";
    fail(os.str());
  }
  if (w.arrived > 0 && (w.pc != pc || w.mask != mask || w.kind != kind)) {
    int other = 0;
    while (!(g_threads[size_t(base + other)].state == State::kCollective)) ++other;
    std::ostringstream os;
    os << block_prefix() << ": divergent warp collective in warp " << me.warp << ": lane " << me.lane << " at "
       << coll_name(kind) << " mask 0x" << std::hex << mask << std::dec << " " << where(pc) << ", lane " << other
       << " at " << coll_name(w.kind) << " mask 0x" << std::hex << w.mask << std::dec << " " << where(w.pc);
    fail(os.str());
  }
  me.state = State::kCollective;
  me.pc = pc;
  me.coll = kind;
  me.mask = mask;
  me.arg = arg;
  me.width = width;
  if (w.arrived == 0) {
    w.pc = pc;
    w.mask = mask;
    w.kind = kind;
  }
  if (++w.arrived == __builtin_popcount(mask)) {
    w.arrived = 0;
    Thread* lanes = &g_threads[size_t(base)];
    if (kind == Coll::kMma) {
      complete_mma(lanes);
    } else if (kind == Coll::kLdmatrix) {
      complete_ldmatrix(lanes);
    } else if (kind == Coll::kBallot) {
      unsigned bits = 0;
      for (int l = 0; l < lanes_here; ++l)
        if ((mask >> l & 1u) && lanes[l].in) bits |= 1u << l;
      for (int l = 0; l < lanes_here; ++l)
        if (mask >> l & 1u) lanes[l].out = bits;
    } else if (kind != Coll::kSyncwarp) {
      for (int l = 0; l < lanes_here; ++l)
        if (mask >> l & 1u) lanes[l].out = shfl_result(lanes[l], lanes);
    }
    for (int l = 0; l < lanes_here; ++l)
      if (mask >> l & 1u) lanes[l].state = State::kRunnable;
  }
  yield();
}

// ---- the tensor-core product -------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, from the PTX ISA's fragment figures for
// m16n8k16 with 16-bit floating-point inputs. With g = lane / 4 (the group) and t = lane % 4:
//   A (16 x 16, row): reg0 = (row g,   k 2t..2t+1), reg1 = (g+8, 2t..2t+1),
//                     reg2 = (g, 2t+8..2t+9),      reg3 = (g+8, 2t+8..2t+9)
//   B (16 x 8, col):  reg0 = (k 2t..2t+1, n g),     reg1 = (k 2t+8..2t+9, n g)
//   C, D (16 x 8):    c0, c1 = (g, 2t..2t+1),       c2, c3 = (g+8, 2t..2t+1)
// In each 32-bit register the element with the lower index sits in the low 16 bits. Products of
// bf16 values are exact in fp32; sums run in k order in fp32.
float bits_to_float(uint32_t r) {
  float f;
  std::memcpy(&f, &r, 4);
  return f;
}
float bf16_lo(uint32_t r) { return bits_to_float(r << 16); }
float bf16_hi(uint32_t r) { return bits_to_float(r & 0xFFFF0000u); }

void complete_mma(Thread* lanes) {
  float A[16][16], Bt[8][16], C[16][8];  // Bt: B transposed, so each output is a contiguous dot
  for (int lane = 0; lane < 32; ++lane) {
    const MmaIn& in = *lanes[lane].mma_in;
    const int g = lane / 4, t = lane % 4;
    A[g][2 * t] = bf16_lo(in.a[0]);
    A[g][2 * t + 1] = bf16_hi(in.a[0]);
    A[g + 8][2 * t] = bf16_lo(in.a[1]);
    A[g + 8][2 * t + 1] = bf16_hi(in.a[1]);
    A[g][2 * t + 8] = bf16_lo(in.a[2]);
    A[g][2 * t + 9] = bf16_hi(in.a[2]);
    A[g + 8][2 * t + 8] = bf16_lo(in.a[3]);
    A[g + 8][2 * t + 9] = bf16_hi(in.a[3]);
    Bt[g][2 * t] = bf16_lo(in.b[0]);
    Bt[g][2 * t + 1] = bf16_hi(in.b[0]);
    Bt[g][2 * t + 8] = bf16_lo(in.b[1]);
    Bt[g][2 * t + 9] = bf16_hi(in.b[1]);
    C[g][2 * t] = in.c[0];
    C[g][2 * t + 1] = in.c[1];
    C[g + 8][2 * t] = in.c[2];
    C[g + 8][2 * t + 1] = in.c[3];
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int e = 0; e < 4; ++e) {
      const float* a = A[rows[e]];
      const float* b = Bt[cols[e]];
      float acc = 0.f;
      for (int k = 0; k < 16; ++k) acc += a[k] * b[k];
      lanes[lane].mma_out[e] = C[rows[e]][cols[e]] + acc;
    }
  }
  ++g_launch->mma_count;
}

// ---- ldmatrix ----------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16, from the PTX ISA (ldmatrix; "ldmatrix
// fragment layout for one 8x8 matrix with 16-bit elements"). Matrix i (of 1, 2 or 4) has its 8 row
// addresses in lanes 8i..8i+7, each row 8 contiguous b16 (16 bytes, naturally aligned). Each
// thread receives a fragment of a row, thread 0 the first: lane l gets, in register i, elements
// (row l/4, columns 2(l%4) and 2(l%4)+1) of matrix i, the lower column in the low 16 bits. With
// .trans the matrix is read column-major: lane l gets (rows 2(l%4) and 2(l%4)+1, column l/4) of
// the matrix as stored, the lower row in the low half. Each lane read its own row when it
// arrived (checked as that lane's shared-memory read); here the rows are distributed.
void complete_ldmatrix(Thread* lanes) {
  const int num = lanes[0].ld_num;
  const bool trans = lanes[0].ld_trans;
  auto element = [&](int row_lane, int col) {  // b16 element `col` of the row that lane row_lane read
    return uint32_t(lanes[row_lane].ld_row[col / 2] >> (16 * (col % 2)) & 0xFFFFu);
  };
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < num; ++i) {
      uint32_t r;
      if (!trans) r = lanes[8 * i + g].ld_row[t];
      else r = element(8 * i + 2 * t, g) | element(8 * i + 2 * t + 1, g) << 16;
      lanes[l].ld_out[i] = r;
    }
  }
}

// ---- memory access checks ----------------------------------------------------------------------

bool g_in_kernel = false;
uintptr_t g_alloc_cache_lo = 0, g_alloc_cache_hi = 0;

// var: the static __shared__ variable accessed, or null for dynamic shared memory.
std::string shared_name(const StaticShared* var) {
  return var ? "__shared__ " + var->name : std::string("dynamic shared memory");
}

// The pending cp.async of thread `owner` whose destination holds shadow byte `index`.
const AsyncCopy* pending_copy(int owner, size_t index) {
  for (const AsyncCopy& c : g_threads[size_t(owner)].async)
    if (index >= c.shadow && index < c.shadow + 16) return &c;
  return nullptr;
}

// An access by thread `me` (the running thread, or for an ldmatrix row or a retired cp.async the
// lane or thread it belongs to) to n bytes of shared memory at shadow index shadow_index.
void shared_access(Thread& me, size_t shadow_index, size_t n, bool write, const void* pc,
                   const StaticShared* var, size_t var_offset) {
  Launch& L = *g_launch;
  const int16_t tid = int16_t(me.tid);
  for (size_t i = 0; i < n; ++i) {
    ShadowByte& s = L.shadow[shadow_index + i];
    if (s.async_writer >= 0) {
      const AsyncCopy* c = pending_copy(s.async_writer, shadow_index + i);
      std::ostringstream os;
      os << block_prefix() << ": " << thread_str(me) << (write ? " writes " : " reads ") << shared_name(var)
         << " byte " << var_offset + i << " at " << where(pc) << ", the destination of a cp.async by thread "
         << dim_str(g_threads[size_t(s.async_writer)].coords.thread_idx) << " issued at " << (c ? where(c->pc) : "?")
         << " and not yet waited for (its bytes land only when cp.async.wait_group / wait_all retires its group"
         << (s.async_writer == tid ? ")" : ", and other threads see them only after a __syncthreads that follows)");
      fail(os.str());
    }
    const bool written_in_block = s.w_epoch >= L.block_first_epoch;
    const bool write_now = written_in_block && s.w_epoch == g_epoch;
    if (write_now && s.writer != tid) {
      std::ostringstream os;
      os << block_prefix() << ": shared-memory race on " << shared_name(var) << " byte " << var_offset + i << ": thread "
         << dim_str(g_threads[s.writer].coords.thread_idx) << " wrote it at " << where(s.w_pc) << ", and "
         << thread_str(me) << (write ? " writes" : " reads") << " it at " << where(pc)
         << " with no __syncthreads in between";
      fail(os.str());
    }
    if (write && s.r_epoch == g_epoch && s.reader != tid) {
      std::ostringstream os;
      os << block_prefix() << ": shared-memory race on " << shared_name(var) << " byte " << var_offset + i << ": "
         << (s.reader == -2 ? std::string("several threads") : "thread " + dim_str(g_threads[s.reader].coords.thread_idx))
         << " read it at " << where(s.r_pc) << ", and " << thread_str(me) << " writes it at " << where(pc)
         << " with no __syncthreads in between";
      fail(os.str());
    }
    if (!write && !written_in_block) {
      std::ostringstream os;
      os << block_prefix() << ": " << thread_str(me) << " reads " << shared_name(var) << " byte " << var_offset + i << " at " << where(pc)
         << ", which nothing in this block has written";
      fail(os.str());
    }
    if (write) {
      s.w_epoch = g_epoch;
      s.writer = tid;
      s.w_pc = pc;
    } else if (s.r_epoch != g_epoch) {
      s.r_epoch = g_epoch;
      s.reader = tid;
      s.r_pc = pc;
    } else if (s.reader != tid) {
      s.reader = -2;
    }
  }
}

// Across the blocks of a launch: any two accesses to a byte, one a write (blocks are not
// ordered). Within a block: as for shared memory, two threads in one barrier interval.
void global_race_access(uintptr_t p, size_t n, bool write, const void* pc) {
  Launch& L = *g_launch;
  const int16_t tid = int16_t(g_cur->tid);
  auto report = [&](size_t i, const std::string& first) {
    std::ostringstream os;
    os << block_prefix() << ": global-memory race at " << reinterpret_cast<void*>(p + i) << ": " << first
       << ", and " << thread_str(*g_cur) << (write ? " writes" : " reads") << " it at " << where(pc);
    fail(os.str());
  };
  for (size_t i = 0; i < n; ++i) {
    GlobalShadow& s = L.global_shadow[p + i];
    if (s.block >= 0 && s.block != L.block_linear && (write || s.written)) {
      std::ostringstream first;
      first << "block #" << s.block << " " << (s.written ? "wrote" : "read") << " it at " << where(s.pc)
            << " in the same launch (blocks are not ordered)";
      report(i, first.str());
    }
    if (s.block != L.block_linear) s = GlobalShadow{L.block_linear};
    if (s.w_epoch == g_epoch && s.writer != tid)
      report(i, "thread " + dim_str(g_threads[size_t(s.writer)].coords.thread_idx) + " of this block wrote it at " +
                    where(s.w_pc) + " with no __syncthreads in between");
    if (write && s.r_epoch == g_epoch && s.reader != tid)
      report(i, (s.reader == -2 ? std::string("several threads")
                                : "thread " + dim_str(g_threads[size_t(s.reader)].coords.thread_idx)) +
                    " of this block read it at " + where(s.r_pc) + " with no __syncthreads in between");
    s.pc = pc;
    if (write) {
      s.written = true;
      s.writer = tid;
      s.w_epoch = g_epoch;
      s.w_pc = pc;
    } else if (s.r_epoch != g_epoch) {
      s.reader = tid;
      s.r_epoch = g_epoch;
      s.r_pc = pc;
    } else if (s.reader != tid) {
      s.reader = -2;
    }
  }
}

// natural: a 1/2/4/8/16-byte access (aligned to its size on a GPU); false for a range (a struct
// copy), whose alignment is its type's.
void check_access(const void* addr, size_t n, bool write, const void* pc, bool natural) {
  if (!g_in_kernel || !g_cur) return;
  Launch& L = *g_launch;
  const uintptr_t p = reinterpret_cast<uintptr_t>(addr);
  const char* verb = write ? "writes" : "reads";
  auto misaligned = [&](const char* space) {
    std::ostringstream os;
    os << block_prefix() << ": " << thread_str(*g_cur) << " " << verb << " " << n << " bytes of " << space
       << " at " << addr << ", not " << n << "-byte aligned, at " << where(pc);
    fail(os.str());
  };
  // threadIdx, blockIdx, blockDim, gridDim: the emulator's pointer and this thread's coordinates
  if (p >= reinterpret_cast<uintptr_t>(&g_coords) && p + n <= reinterpret_cast<uintptr_t>(&g_coords + 1)) return;
  if (p >= reinterpret_cast<uintptr_t>(&g_cur->coords) && p + n <= reinterpret_cast<uintptr_t>(&g_cur->coords + 1)) {
    if (!write) return;
  }
  // this fiber's own stack: locals
  const uintptr_t slo = reinterpret_cast<uintptr_t>(g_cur->stack_lo);
  if (p >= slo && p < slo + kStackBytes) return;
  // the parameter space: read-only
  for (const auto& [lo, len] : L.param_ranges)
    if (p >= lo && p + n <= lo + len) {
      if (write) {
        std::ostringstream os;
        os << block_prefix() << ": " << thread_str(*g_cur) << " writes the launch's parameter space at " << where(pc);
        fail(os.str());
      }
      return;
    }
  // dynamic shared memory
  const uintptr_t dlo = reinterpret_cast<uintptr_t>(L.dyn.data());
  if (L.dyn_bytes > 0 && p >= dlo && p + n <= dlo + L.dyn_bytes) {
    if (natural && p % n != 0) misaligned("shared memory");
    shared_access(*g_cur, p - dlo, n, write, pc, nullptr, p - dlo);
    return;
  }
  // static __shared__ variables (in the executable's data, never near device memory)
  for (size_t v = 0; v < L.info->shared.size(); ++v) {
    const StaticShared& s = L.info->shared[v];
    if (p + n > s.addr && p < s.addr + s.size) {
      if (p < s.addr || p + n > s.addr + s.size) {
        std::ostringstream os;
        os << block_prefix() << ": " << thread_str(*g_cur) << " " << verb << " " << n << " bytes at offset "
           << int64_t(p - s.addr) << " of __shared__ " << s.name << " (" << s.size << " bytes), at " << where(pc);
        fail(os.str());
      }
      if (natural && p % n != 0) misaligned("shared memory");
      shared_access(*g_cur, L.static_offset[v] + (p - s.addr), n, write, pc, &s, p - s.addr);
      return;
    }
  }
  // global memory: inside one device allocation, or an error
  if (!(p >= g_alloc_cache_lo && p + n <= g_alloc_cache_hi)) {
    uintptr_t base = 0;
    size_t size = 0;
    if (!find_allocation(addr, &base, &size) || p + n > base + size) {
      std::ostringstream os;
      os << block_prefix() << ": " << thread_str(*g_cur) << " " << verb << " " << n;
      const bool near_dyn = L.dyn_bytes > 0 && p + n > dlo && p < dlo + L.dyn_bytes + 4096;
      if (near_dyn && !find_allocation(addr, &base, &size)) {
        // past the end of the dynamic shared buffer (and not into device memory)
        os << " bytes at offset " << int64_t(p - dlo) << " of dynamic shared memory, which has " << L.dyn_bytes
           << " bytes, at " << where(pc);
      } else {
        os << " bytes at " << addr << ", at " << where(pc) << ": ";
        if (find_allocation(addr, &base, &size))
          os << "out of bounds: the device allocation at " << reinterpret_cast<void*>(base) << " has " << size
             << " bytes and the access ends " << (p + n - base - size) << " bytes past it";
        else
          os << check_device_range(addr, n, "the address");
      }
      fail(os.str());
    }
    g_alloc_cache_lo = base;
    g_alloc_cache_hi = base + size;
  }
  if (natural && p % n != 0) misaligned("global memory");
  if (write) L.bytes_written += n;
  else L.bytes_read += n;
  if (g_global_races) global_race_access(p, n, write, pc);
}

// Where [p, p + n) lies in the block's shared memory (the dynamic buffer or one static
// variable): its shadow index, the variable (null: dynamic) and the offset in it. False if the
// range is not entirely inside one of them.
struct SharedLoc {
  size_t shadow = 0;
  const StaticShared* var = nullptr;
  size_t offset = 0;
};
bool locate_shared(uintptr_t p, size_t n, SharedLoc* out) {
  Launch& L = *g_launch;
  const uintptr_t dlo = reinterpret_cast<uintptr_t>(L.dyn.data());
  if (L.dyn_bytes > 0 && p >= dlo && p + n <= dlo + L.dyn_bytes) {
    *out = SharedLoc{p - dlo, nullptr, p - dlo};
    return true;
  }
  for (size_t v = 0; v < L.info->shared.size(); ++v) {
    const StaticShared& s = L.info->shared[v];
    if (p >= s.addr && p + n <= s.addr + s.size) {
      *out = SharedLoc{L.static_offset[v] + (p - s.addr), &s, p - s.addr};
      return true;
    }
  }
  return false;
}

std::string ptr_str(const void* p) {
  std::ostringstream os;
  os << p;
  return os.str();
}

}  // namespace

// ---- public entry points -----------------------------------------------------------------------

void* dynamic_shared() {
  if (!g_launch) return nullptr;
  return g_launch->dyn_bytes ? g_launch->dyn.data() : nullptr;
}

void syncthreads() { arrive_barrier(__builtin_return_address(0)); }

void syncwarp(unsigned mask) {
  arrive_collective(Coll::kSyncwarp, __builtin_return_address(0), mask, 0, 32);
}

[[noreturn]] void trap() {
  std::ostringstream os;
  os << block_prefix() << ": " << thread_str(*g_cur) << " executed __trap() at " << where(__builtin_return_address(0));
  fail(os.str());
}

namespace {
template <class T>
T shuffle(Coll kind, const void* pc, unsigned mask, T v, int arg, int width) {
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  g_cur->in = bits;
  arrive_collective(kind, pc, mask, arg, width);
  T out;
  std::memcpy(&out, &g_cur->out, sizeof(T));
  return out;
}
}  // namespace

#define LTRAIN_EMU_SHFL(NAME, KIND, T, ARG)                                  \
  T NAME(unsigned mask, T v, ARG a, int width) {                             \
    return shuffle<T>(KIND, __builtin_return_address(0), mask, v, int(a), width); \
  }
LTRAIN_EMU_SHFL(shfl_xor, Coll::kShflXor, float, int)
LTRAIN_EMU_SHFL(shfl_xor, Coll::kShflXor, double, int)
LTRAIN_EMU_SHFL(shfl_xor, Coll::kShflXor, int, int)
LTRAIN_EMU_SHFL(shfl_xor, Coll::kShflXor, unsigned, int)
LTRAIN_EMU_SHFL(shfl_idx, Coll::kShflIdx, float, int)
LTRAIN_EMU_SHFL(shfl_idx, Coll::kShflIdx, int, int)
LTRAIN_EMU_SHFL(shfl_down, Coll::kShflDown, float, unsigned)
LTRAIN_EMU_SHFL(shfl_up, Coll::kShflUp, float, unsigned)
#undef LTRAIN_EMU_SHFL

unsigned ballot(unsigned mask, int predicate) {
  g_cur->in = predicate != 0;
  arrive_collective(Coll::kBallot, __builtin_return_address(0), mask, 0, 32);
  return unsigned(g_cur->out);
}

void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  MmaIn in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {c[0], c[1], c[2], c[3]}};
  g_cur->mma_in = &in;
  g_cur->mma_out = c;
  arrive_collective(Coll::kMma, __builtin_return_address(0), 0xffffffffu, 0, 32);
}

void ldmatrix_m8n8(uint32_t* r, const void* row, int num, bool trans) {
  const void* pc = __builtin_return_address(0);
  Thread& me = *g_cur;
  const char* instr = trans ? "ldmatrix .trans" : "ldmatrix";
  me.ld_out = r;
  me.ld_num = num;
  me.ld_trans = trans;
  if (me.lane < 8 * num) {  // this lane addresses row lane % 8 of matrix lane / 8
    const uintptr_t p = reinterpret_cast<uintptr_t>(row);
    SharedLoc loc;
    if (!locate_shared(p, 16, &loc)) {
      fail(block_prefix() + ": " + thread_str(me) + " gives " + instr + " the row address " + ptr_str(row) +
           ", whose 16 bytes are not in the block's shared memory, at " + where(pc));
    }
    if (p % 16 != 0) {
      fail(block_prefix() + ": " + thread_str(me) + " gives " + instr + " the row address " + ptr_str(row) +
           " (" + shared_name(loc.var) + " byte " + std::to_string(loc.offset) +
           "), not 16-byte aligned (each row is 16 bytes, naturally aligned), at " + where(pc));
    }
    shared_access(me, loc.shadow, 16, false, pc, loc.var, loc.offset);
    std::memcpy(me.ld_row, row, 16);
  }
  arrive_collective(Coll::kLdmatrix, pc, 0xffffffffu, num * 2 + int(trans), 32);
}

void cp_async_16(void* dst, const void* src, int src_bytes) {
  const void* pc = __builtin_return_address(0);
  Launch& L = *g_launch;
  Thread& me = *g_cur;
  auto who = [&] { return block_prefix() + ": " + thread_str(me) + " issues cp.async"; };
  if (src_bytes < 0 || src_bytes > 16)
    fail(who() + " with src-size " + std::to_string(src_bytes) + " (0..16 for a 16-byte copy) at " + where(pc));
  const uintptr_t d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  SharedLoc loc;
  if (!locate_shared(d, 16, &loc))
    fail(who() + " to " + ptr_str(dst) + ", whose 16 bytes are not in the block's shared memory, at " + where(pc));
  if (d % 16 != 0)
    fail(who() + " to " + shared_name(loc.var) + " byte " + std::to_string(loc.offset) +
         ", not 16-byte aligned, at " + where(pc));
  if (s % 16 != 0) fail(who() + " from " + ptr_str(src) + ", not 16-byte aligned, at " + where(pc));
  AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  c.shadow = loc.shadow;
  c.var = loc.var;
  c.var_offset = loc.offset;
  c.pc = pc;
  if (src_bytes > 0) {  // the source: global memory, inside one device allocation
    const size_t n = size_t(src_bytes);
    if (!(s >= g_alloc_cache_lo && s + n <= g_alloc_cache_hi)) {
      uintptr_t base = 0;
      size_t size = 0;
      if (!find_allocation(src, &base, &size) || s + n > base + size)
        fail(who() + " reading " + std::to_string(n) + " bytes at " + where(pc) + ": " +
             check_device_range(src, n, "the source"));
      g_alloc_cache_lo = base;
      g_alloc_cache_hi = base + size;
    }
    L.bytes_read += size_t(src_bytes);
    if (g_global_races) global_race_access(s, size_t(src_bytes), false, pc);
    std::memcpy(c.data, src, size_t(src_bytes));  // the rest stays zero (src-size < cp-size)
  }
  // The destination is written at some time before the wait: a write now (races with accesses
  // of other threads in this barrier interval) and pending until it is retired.
  shared_access(me, loc.shadow, 16, true, pc, loc.var, loc.offset);
  for (size_t i = 0; i < 16; ++i) L.shadow[loc.shadow + i].async_writer = int16_t(me.tid);
  me.async.push_back(c);
}

void cp_async_commit_group() {
  Thread& me = *g_cur;
  for (AsyncCopy& c : me.async)
    if (c.group == 0) c.group = me.next_group;
  ++me.next_group;  // with no uncommitted copies, an empty group (trivially complete)
}

void cp_async_wait_group(int n) {
  Launch& L = *g_launch;
  Thread& me = *g_cur;
  const uint64_t committed = me.next_group - 1;
  // retire every committed group but the n most recent (in issue order; the rest stay in order)
  size_t kept = 0;
  for (size_t j = 0; j < me.async.size(); ++j) {
    const AsyncCopy& c = me.async[j];
    if (c.group != 0 && c.group + uint64_t(n) <= committed) {
      for (size_t i = 0; i < 16; ++i) L.shadow[c.shadow + i].async_writer = -1;
      shared_access(me, c.shadow, 16, true, c.pc, c.var, c.var_offset);
      std::memcpy(c.dst, c.data, 16);
    } else {
      if (kept != j) me.async[kept] = c;
      ++kept;
    }
  }
  me.async.resize(kept);
}

void cp_async_wait_all() {
  cp_async_commit_group();
  cp_async_wait_group(0);
}

void set_schedule(Schedule s, uint64_t seed) {
  init_from_env();
  g_schedule = s;
  g_seed = seed;
  g_rng.seed(seed);
}
Schedule schedule() {
  init_from_env();
  return g_schedule;
}
void set_global_race_check(bool on) {
  init_from_env();
  g_global_races = on;
}
void set_quiet(bool on) {
  init_from_env();
  g_quiet = on;
}
LaunchStats last_launch_stats() { return g_last_stats; }
LaunchStats total_launch_stats() { return g_total_stats; }

cudaError_t launch_raw(const void* fn, dim3 grid, dim3 block, size_t dyn_bytes, cudaStream_t stream,
                       void (*body)(void*), void* closure, size_t closure_bytes, const void* params,
                       size_t params_bytes) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  init_from_env();
  KernelInfo& info = kernel_info(fn);
  const cudaDeviceProp& prop = device_properties();
  auto refuse = [&](cudaError_t err, const std::string& why) {
    const std::string msg = "cuda_emu: launch of kernel " + info.name + " refused: " + why;
    if (!g_quiet) std::fprintf(stderr, "%s\n", msg.c_str());
    set_error(err, msg);
    return err;
  };
  {
    std::ostringstream os;
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) {
      os << "grid " << dim_str(grid) << " block " << dim_str(block) << " has a zero dimension";
      return refuse(cudaErrorInvalidConfiguration, os.str());
    }
    if (threads > uint64_t(prop.maxThreadsPerBlock) || block.x > unsigned(prop.maxThreadsDim[0]) ||
        block.y > unsigned(prop.maxThreadsDim[1]) || block.z > unsigned(prop.maxThreadsDim[2])) {
      os << "block " << dim_str(block) << " has " << threads << " threads; the limits are "
         << prop.maxThreadsPerBlock << " threads and (" << prop.maxThreadsDim[0] << "," << prop.maxThreadsDim[1]
         << "," << prop.maxThreadsDim[2] << ")";
      return refuse(cudaErrorInvalidConfiguration, os.str());
    }
    if (grid.x > unsigned(prop.maxGridSize[0]) || grid.y > unsigned(prop.maxGridSize[1]) ||
        grid.z > unsigned(prop.maxGridSize[2])) {
      os << "grid " << dim_str(grid) << " is over the limits (" << prop.maxGridSize[0] << ","
         << prop.maxGridSize[1] << "," << prop.maxGridSize[2] << ")";
      return refuse(cudaErrorInvalidConfiguration, os.str());
    }
    const size_t total = info.static_shared_bytes + dyn_bytes;
    const size_t allowed_dyn = info.max_dynamic_shared >= 0
                                   ? size_t(info.max_dynamic_shared)
                                   : prop.sharedMemPerBlock - std::min(prop.sharedMemPerBlock, info.static_shared_bytes);
    if (total > prop.sharedMemPerBlockOptin) {
      os << "it asks for " << info.static_shared_bytes << " bytes of static and " << dyn_bytes
         << " of dynamic shared memory, " << total << " in all; the device (" << prop.name << ") has at most "
         << prop.sharedMemPerBlockOptin << " per block";
      return refuse(cudaErrorInvalidValue, os.str());
    }
    if (dyn_bytes > allowed_dyn) {
      os << "it asks for " << dyn_bytes << " bytes of dynamic shared memory (plus " << info.static_shared_bytes
         << " static); above " << allowed_dyn << " bytes a kernel needs cudaFuncSetAttribute("
         << "cudaFuncAttributeMaxDynamicSharedMemorySize)"
         << (info.max_dynamic_shared >= 0 ? " with a value that covers it" : "") << " (48 KiB in all without it)";
      return refuse(cudaErrorInvalidValue, os.str());
    }
  }
  (void)stream;

  Launch L;
  L.info = &info;
  L.grid = grid;
  L.block = block;
  L.dyn_bytes = dyn_bytes;
  L.dyn.assign(dyn_bytes, 0xFF);
  L.param_ranges[0] = {reinterpret_cast<uintptr_t>(closure), closure_bytes};
  L.param_ranges[1] = {reinterpret_cast<uintptr_t>(params), params_bytes};
  L.nthreads = int(block.x * block.y * block.z);
  size_t shadow = dyn_bytes;
  for (const StaticShared& s : info.shared) {
    L.static_offset.push_back(shadow);
    shadow += s.size;
  }
  L.shadow.assign(shadow, ShadowByte{});
  if (g_threads.size() < size_t(L.nthreads)) g_threads.resize(size_t(L.nthreads));

  // block order
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order;
  if (g_schedule == Schedule::kRandom) {
    order.resize(nblocks);
    for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), g_rng);
  }

  Launch* prev_launch = g_launch;
  g_launch = &L;
  g_body = body;
  g_closure = closure;
  g_alloc_cache_lo = g_alloc_cache_hi = 0;
  for (uint64_t bi = 0; bi < nblocks && !L.failed; ++bi) {
    const uint64_t b = g_schedule == Schedule::kRandom ? order[bi]
                       : g_schedule == Schedule::kReverse ? nblocks - 1 - bi
                                                          : bi;
    const uint3 bidx{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
    L.block_linear = int(b);
    L.live = L.nthreads;
    L.exited = 0;
    L.at_barrier = 0;
    L.barrier_pc = nullptr;
    L.warps.assign(size_t((L.nthreads + 31) / 32), WarpState{});
    ++g_epoch;
    L.block_first_epoch = g_epoch;
    // shared memory starts as garbage in every block
    if (dyn_bytes) std::memset(L.dyn.data(), 0xFF, dyn_bytes);
    for (const StaticShared& s : info.shared) std::memset(reinterpret_cast<void*>(s.addr), 0xFF, s.size);
    for (int i = 0; i < L.nthreads; ++i) {
      Thread& t = g_threads[size_t(i)];
      prepare_fiber(t, &fiber_main);
      t.tid = i;
      t.lane = i % 32;
      t.warp = i / 32;
      t.state = State::kRunnable;
      t.pc = nullptr;
      t.async.clear();
      t.next_group = 1;
      t.coords.thread_idx = uint3{unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / (block.x * block.y))};
      t.coords.block_idx = bidx;
      t.coords.block_dim = block;
      t.coords.grid_dim = grid;
    }
    int cursor = g_schedule == Schedule::kReverse ? L.nthreads - 1 : 0;
    g_in_kernel = true;
    while (!L.failed) {
      // next runnable thread
      int pick = -1;
      if (g_schedule == Schedule::kRandom) {
        const int start = int(g_rng() % uint64_t(L.nthreads));
        for (int k = 0; k < L.nthreads; ++k) {
          const int i = (start + k) % L.nthreads;
          if (g_threads[size_t(i)].state == State::kRunnable) {
            pick = i;
            break;
          }
        }
      } else {
        for (int k = 0; k < L.nthreads; ++k) {
          const int i = g_schedule == Schedule::kReverse ? (cursor - k + L.nthreads) % L.nthreads
                                                         : (cursor + k) % L.nthreads;
          if (g_threads[size_t(i)].state == State::kRunnable) {
            pick = i;
            break;
          }
        }
      }
      if (pick < 0) {
        if (L.live == 0) break;
        std::ostringstream os;
        os << "kernel " << info.name << " block " << dim_str(bidx) << ": deadlock; where every thread stands:";
        for (int i = 0; i < L.nthreads; ++i) {
          const Thread& t = g_threads[size_t(i)];
          os << "\n    " << thread_str(t) << ": ";
          if (t.state == State::kExited) os << "exited";
          else if (t.state == State::kBarrier) os << "__syncthreads at " << where(t.pc);
          else os << coll_name(t.coll) << " mask 0x" << std::hex << t.mask << std::dec << " at " << where(t.pc);
        }
        L.failed = true;
        L.error = os.str();
        break;
      }
      cursor = g_schedule == Schedule::kReverse ? pick - 1 + (pick == 0 ? L.nthreads : 0) : pick + 1;
      if (cursor >= L.nthreads) cursor = 0;
      switch_to(g_threads[size_t(pick)]);
    }
    g_in_kernel = false;
    if (L.failed)
      for (int i = 0; i < L.nthreads; ++i) g_threads[size_t(i)].dirty = true;
  }
  g_in_kernel = false;
  g_launch = prev_launch;
  g_coords = nullptr;
  g_last_stats = LaunchStats{L.mma_count, L.bytes_read, L.bytes_written};
  g_total_stats.mma += L.mma_count;
  g_total_stats.global_bytes_read += L.bytes_read;
  g_total_stats.global_bytes_written += L.bytes_written;
  g_total_stats.launches += 1;
  if (L.failed) {
    const std::string msg = "cuda_emu: " + L.error;
    if (!g_quiet) std::fprintf(stderr, "%s\n", msg.c_str());
    set_error(cudaErrorLaunchFailure, msg);
    return cudaErrorLaunchFailure;
  }
  return cudaSuccess;
}

cudaError_t set_max_dynamic_shared(const void* fn, int bytes) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  KernelInfo& info = kernel_info(fn);
  const cudaDeviceProp& prop = device_properties();
  if (bytes < 0 || size_t(bytes) + info.static_shared_bytes > prop.sharedMemPerBlockOptin) {
    std::ostringstream os;
    os << "cuda_emu: cudaFuncSetAttribute(" << info.name << ", cudaFuncAttributeMaxDynamicSharedMemorySize, "
       << bytes << "): with " << info.static_shared_bytes << " bytes of static shared memory the device ("
       << prop.name << ") allows at most " << prop.sharedMemPerBlockOptin - info.static_shared_bytes;
    if (!g_quiet) std::fprintf(stderr, "%s\n", os.str().c_str());
    set_error(cudaErrorInvalidValue, os.str());
    return cudaErrorInvalidValue;
  }
  info.max_dynamic_shared = bytes;
  return cudaSuccess;
}

size_t static_shared_bytes(const void* fn) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  return kernel_info(fn).static_shared_bytes;
}

}  // namespace cuda_emu

// ---- the -fsanitize=thread instrumentation's hooks ---------------------------------------------
// Kernel sources are compiled with g++ -fsanitize=thread, which calls these on every memory
// access; no libtsan is linked. Only accesses made while a kernel runs are checked.
extern "C" {
#define LTRAIN_EMU_HOOK(N)                                                                        \
  void __tsan_read##N(void* a) { cuda_emu::check_access(a, N, false, __builtin_return_address(0), true); }   \
  void __tsan_write##N(void* a) { cuda_emu::check_access(a, N, true, __builtin_return_address(0), true); }   \
  void __tsan_unaligned_read##N(void* a) { cuda_emu::check_access(a, N, false, __builtin_return_address(0), true); } \
  void __tsan_unaligned_write##N(void* a) { cuda_emu::check_access(a, N, true, __builtin_return_address(0), true); }
LTRAIN_EMU_HOOK(1)
LTRAIN_EMU_HOOK(2)
LTRAIN_EMU_HOOK(4)
LTRAIN_EMU_HOOK(8)
LTRAIN_EMU_HOOK(16)
#undef LTRAIN_EMU_HOOK
void __tsan_read_range(void* a, long n) {
  cuda_emu::check_access(a, size_t(n), false, __builtin_return_address(0), false);
}
void __tsan_write_range(void* a, long n) {
  cuda_emu::check_access(a, size_t(n), true, __builtin_return_address(0), false);
}
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit(void*) {}
void __tsan_vptr_update(void*, void*) {}
}
