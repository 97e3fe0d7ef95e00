// CUDA devices on the runtime (include/baton/cuda.h): exits 77 without a
// GPU.  On a GPU, with two logical devices on GPU 0 (each its own streams)
// and the runtime in DEDICATED mode:
//   - a chain of tasks alternating between the devices, each adding its
//     index to a device buffer after waiting on its predecessor's event:
//     the result proves every cross-device dependency became a stream
//     wait (no host synchronization in between);
//   - many steps in a row, synced only at the end, give the same result;
//   - a task whose launch fails ends the step named "task N on cuda:0",
//     and the next step runs.
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda_runtime.h>

#include "baton/baton.h"
#include "baton/cuda.h"

static int failures;

#define CHECK(c)                                                              \
  do {                                                                        \
    if (!(c)) {                                                               \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);                \
      failures++;                                                             \
    }                                                                         \
  } while (0)

__global__ void
add_kernel(float *v, float x)
{
  // A little work, so that a missing wait would let tasks overlap.
  for (int i = 0; i < 1000; i++)
    __syncthreads();
  if (threadIdx.x == 0)
    v[0] = v[0] * 2.0f + x;
}

struct state {
  float *buf;
  int fail_task;
};

static int
task(const bt_task_call_t *call, char *errbuf, size_t errlen)
{
  state *st = static_cast<state *>(call->user);
  const bt_cuda_ctx_t *ctx = static_cast<const bt_cuda_ctx_t *>(
      call->device_ctx);
  cudaStream_t s = static_cast<cudaStream_t>(ctx->stream);

  if (call->task == st->fail_task) {
    // An impossible launch: more threads per block than any GPU allows.
    add_kernel<<<1, 4096, 0, s>>>(st->buf, 0.0f);
    return 0;
  }
  add_kernel<<<1, 32, 0, s>>>(st->buf, (float)call->task);
  (void)errbuf;
  (void)errlen;
  return 0;
}

int
main()
{
  const int n = 16;
  int32_t gpus[2] = {0, 0}, device[n], src[n - 1], dst[n - 1];
  bt_device_desc_t desc[2];
  bt_cuda_devices_t *devs = nullptr;
  bt_runtime_config_t rc = BT_RUNTIME_CONFIG_INIT;
  bt_exec_config_t ec = BT_EXEC_CONFIG_INIT;
  bt_dag_t dag = BT_DAG_INIT;
  bt_runtime_t *rt = nullptr;
  bt_exec_t *ex = nullptr;
  bt_error_t err{};
  state st{nullptr, -1};
  float want = 0.0f, got = 0.0f;

  CHECK(bt_cuda_devices_create(nullptr, 0, desc, &devs, &err) == BT_EINVAL);
  if (!bt_cuda_available()) {
    std::printf("no CUDA device: skipped\n");
    return failures ? 1 : 77;
  }
  if (bt_cuda_devices_create(gpus, 2, desc, &devs, &err) != BT_OK) {
    std::printf("FAIL: %s\n", err.message);
    return 1;
  }
  rc.devices = 2;
  rc.device = desc;
  rc.mode = BT_RUNTIME_DEDICATED;
  CHECK(bt_runtime_create(&rc, &rt, &err) == BT_OK);
  for (int t = 0; t < n; t++)
    device[t] = t % 2;
  for (int t = 0; t + 1 < n; t++) {
    src[t] = t;
    dst[t] = t + 1;
  }
  dag.tasks = n;
  dag.task_device = device;
  dag.edges = n - 1;
  dag.src = src;
  dag.dst = dst;
  ec.fn = task;
  ec.user = &st;
  CHECK(bt_exec_create_dag(rt, &dag, &ec, &ex, &err) == BT_OK);
  CHECK(cudaMalloc(&st.buf, sizeof(float)) == cudaSuccess);
  for (int step = 0; step < 3; step++) {
    CHECK(cudaMemset(st.buf, 0, sizeof(float)) == cudaSuccess);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(bt_exec_run(ex, &err) == BT_OK);
    CHECK(bt_cuda_devices_sync(devs, &err) == BT_OK);
    CHECK(cudaMemcpy(&got, st.buf, sizeof got, cudaMemcpyDeviceToHost) ==
          cudaSuccess);
    want = 0.0f;
    for (int t = 0; t < n; t++)
      want = want * 2.0f + (float)t;
    if (got != want) {
      std::printf("FAIL: step %d gave %g, the ordered chain %g\n", step,
                  (double)got, (double)want);
      failures++;
    }
  }
  st.fail_task = 5;
  CHECK(bt_exec_run(ex, &err) != BT_OK);
  CHECK(std::strstr(err.message, "task 5 on cuda:0") != nullptr ||
        std::strstr(err.message, "task 5 on cuda:") != nullptr);
  std::printf("failed step: %s\n", err.message);
  st.fail_task = -1;
  CHECK(bt_cuda_devices_sync(devs, &err) == BT_OK);
  CHECK(bt_exec_run(ex, &err) == BT_OK);
  CHECK(bt_cuda_devices_sync(devs, &err) == BT_OK);
  CHECK(bt_exec_destroy(ex) == BT_OK);
  CHECK(bt_runtime_destroy(rt) == BT_OK);
  cudaFree(st.buf);
  bt_cuda_devices_destroy(devs);
  std::printf("%s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
