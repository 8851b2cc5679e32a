// Deliberately faulty kernels on the CPU emulator: they show that the sanitizer builds of
// tests/emulator/test_emulator_sanitizers.py do report each class of bug that the sanitizer drivers
// (san_attention.cpp, san_qp.cpp) are there to catch.  One case per run, chosen by argv[1]:
//   ok          a correct kernel (a shared-memory exchange with a barrier): no report expected
//   race        the same exchange without the barrier (ThreadSanitizer: data race)
//   overflow    a read one element past the dynamic shared memory (AddressSanitizer)
//   global_oob  a read one element past an input array (AddressSanitizer)
//   misaligned  a double loaded from a 4-byte aligned shared-memory address (UBSan: alignment)
//   leak        a workspace that is never freed (LeakSanitizer)
//   async_ok    cp.async copies, waited for, then a barrier, then read by other threads: clean
//   async_race  the same without the wait before the barrier (ThreadSanitizer: data race)
//   async_leak  a copy never waited for: the emulator fails the launch
//   smem_optin  the emulator's launch check: more than 48 KiB of dynamic shared memory is refused
//               until rt_set_max_dyn_smem (cudaFuncSetAttribute) allows it, as on a GPU
#include "emulator.h"

#include <cstdio>

namespace {

constexpr int kThreads = 64;

template <bool kSync>
CINA_KERNEL(kThreads)
exchange_kernel(const float* in, float* out) {
  CINA_DYN_SMEM(smem_raw);
  float* s = reinterpret_cast<float*>(smem_raw);
  const int t = threadIdx.x;
  s[t] = in[t];
  if constexpr (kSync) __syncthreads();
  out[blockIdx.x * kThreads + t] = s[(t + 1) % kThreads];
}

// cp.async into shared memory (the emulator's model: emulator.h)
template <bool kWait, bool kWaitAtAll>
CINA_KERNEL(kThreads)
async_kernel(const float* in, float* out) {
  CINA_DYN_SMEM(smem_raw);
  float* s = reinterpret_cast<float*>(smem_raw);
  const int t = threadIdx.x;
  if (t % 4 == 0) CINA_EMU_CP_ASYNC16(s + t, in + t);  // 16 bytes: s[t .. t+3]
  CINA_EMU_CP_ASYNC_COMMIT();
  if constexpr (kWait) CINA_EMU_CP_ASYNC_WAIT(0);
  __syncthreads();
  out[blockIdx.x * kThreads + t] = s[(t + 4) % kThreads];
  if constexpr (!kWait && kWaitAtAll) CINA_EMU_CP_ASYNC_WAIT(0);  // too late: after the readers
}

CINA_KERNEL(kThreads) overflow_kernel(const float* in, float* out) {
  CINA_DYN_SMEM(smem_raw);
  float* s = reinterpret_cast<float*>(smem_raw);
  const int t = threadIdx.x;
  s[t] = in[t];
  __syncthreads();
  out[t] = s[t + 1];  // thread 63 reads s[64], one past the kThreads floats
}

CINA_KERNEL(kThreads) global_oob_kernel(const float* in, float* out) {
  const int t = threadIdx.x;
  out[t] = in[t + 1];  // thread 63 reads in[64]
}

CINA_KERNEL(kThreads) misaligned_kernel(const float* in, float* out) {
  CINA_DYN_SMEM(smem_raw);
  const int t = threadIdx.x;
  if (t == 0) {
    double* d = reinterpret_cast<double*>(smem_raw + 4);
    *d = static_cast<double>(in[0]);
    out[0] = static_cast<float>(*d);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const char* what = argc > 1 ? argv[1] : "ok";
  std::vector<float> in(kThreads), out(2 * kThreads, 0.f);
  for (int i = 0; i < kThreads; ++i) in[i] = static_cast<float>(i);
  const size_t smem = kThreads * sizeof(float);
  if (std::strcmp(what, "ok") == 0) {
    CINA_LAUNCH(exchange_kernel<true>, dim3(2), dim3(kThreads), smem, nullptr, in.data(),
                out.data());
    for (int i = 0; i < 2 * kThreads; ++i)
      if (out[i] != in[(i + 1) % kThreads]) {
        std::printf("selftest ok: wrong result\n");
        return 1;
      }
  } else if (std::strcmp(what, "race") == 0) {
    CINA_LAUNCH(exchange_kernel<false>, dim3(2), dim3(kThreads), smem, nullptr, in.data(),
                out.data());
  } else if (std::strcmp(what, "overflow") == 0) {
    CINA_LAUNCH(overflow_kernel, dim3(1), dim3(kThreads), smem, nullptr, in.data(), out.data());
  } else if (std::strcmp(what, "global_oob") == 0) {
    CINA_LAUNCH(global_oob_kernel, dim3(1), dim3(kThreads), 0, nullptr, in.data(), out.data());
  } else if (std::strcmp(what, "misaligned") == 0) {
    CINA_LAUNCH(misaligned_kernel, dim3(1), dim3(kThreads), 64, nullptr, in.data(), out.data());
  } else if (std::strcmp(what, "leak") == 0) {
    void* ws = nullptr;
    if (cina::cuda_rt::rt_malloc(&ws, 256, nullptr, "selftest workspace")) return 1;
    std::printf("selftest leak: workspace %p not freed\n", ws);
    ws = nullptr;
  } else if (std::strcmp(what, "async_ok") == 0 || std::strcmp(what, "async_race") == 0) {
    if (what[6] == 'o') {
      CINA_LAUNCH((async_kernel<true, true>), dim3(2), dim3(kThreads), smem, nullptr, in.data(),
                  out.data());
    } else {
      CINA_LAUNCH((async_kernel<false, true>), dim3(2), dim3(kThreads), smem, nullptr, in.data(),
                  out.data());
    }
    if (!emu::launch_error.empty()) {
      std::printf("selftest %s: %s\n", what, emu::launch_error.c_str());
      return 1;
    }
    for (int i = 0; i < 2 * kThreads; ++i)
      if (out[i] != in[(i % kThreads + 4) % kThreads]) {
        std::printf("selftest %s: wrong result\n", what);
        return 1;
      }
  } else if (std::strcmp(what, "async_leak") == 0) {
    emu::launch_error.clear();
    CINA_LAUNCH((async_kernel<false, false>), dim3(1), dim3(kThreads), smem, nullptr, in.data(),
                out.data());
    if (emu::launch_error.find("cp.async") == std::string::npos) {
      std::printf("selftest async_leak: not reported\n");
      return 1;
    }
    std::printf("selftest async_leak: reported: %s\n", emu::launch_error.c_str());
  } else if (std::strcmp(what, "smem_optin") == 0) {
    const size_t big = 64 * 1024;
    emu::launch_error.clear();
    CINA_LAUNCH(exchange_kernel<true>, dim3(1), dim3(kThreads), big, nullptr, in.data(),
                out.data());
    if (emu::launch_error.empty()) {
      std::printf("selftest smem_optin: a 64 KiB launch without the opt-in was not refused\n");
      return 1;
    }
    if (cina::cuda_rt::rt_set_max_dyn_smem(exchange_kernel<true>, big)) return 1;
    emu::launch_error.clear();
    CINA_LAUNCH(exchange_kernel<true>, dim3(1), dim3(kThreads), big, nullptr, in.data(),
                out.data());
    if (!emu::launch_error.empty() || out[0] != in[1]) {
      std::printf("selftest smem_optin: the launch after the opt-in failed: %s\n",
                  emu::launch_error.c_str());
      return 1;
    }
    std::printf("selftest smem_optin: refused without the opt-in, run with it\n");
  } else {
    std::printf("selftest: unknown case %s\n", what);
    return 2;
  }
  std::printf("selftest %s: done (%g)\n", what, static_cast<double>(out[0]));
  return 0;
}
