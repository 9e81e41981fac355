// A C++ client of actionmesh's public session API (actionmesh.v1.SessionService): opens a
// session, runs a number of control steps and closes the session again.
//
//   [ACTIONMESH_TOKEN=...] actionmesh_cpp_client --target 127.0.0.1:50050 [--steps 100]
//       [--deadline-ms 1000] [--client-id ID]
//
// ACTIONMESH_TOKEN, when set, is sent as `authorization: Bearer <token>` on every call (a
// coordinator with --auth token); an environment variable keeps it out of `ps`.
//
// Every call has its own deadline; every status is checked and a failure prints its code,
// message and the coordinator's reason (trailing metadata `actionmesh-error`). Each reply is
// checked (seq echoed, serve mode set, action float32 [horizon, joints], all finite). After the
// steps it prints one summary line:
//
//   SUMMARY steps=100 p50_ms=2.31 p99_ms=4.02 full=100 early_exit=0 fallback=0 session=<first 8 characters>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "actionmesh_client/proto/session.grpc.pb.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensor bytes are little-endian on the wire: swap them on this host"
#endif

namespace v1 = actionmesh::v1;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string target = "127.0.0.1:50050";
  int steps = 100;
  int deadline_ms = 1000;  // per call: a robot's control loop cannot wait longer than this
  std::string client_id = "cpp-example";
  std::string token;  // from ACTIONMESH_TOKEN; empty: no authorization metadata
};

// A failed check or call; main() prints it and exits non-zero (after closing the session).
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

Options parse(int argc, char** argv) {
  Options options;
  if (const char* token = std::getenv("ACTIONMESH_TOKEN")) options.token = token;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw Failure("missing value after " + flag);
    const std::string value = argv[++i];
    if (flag == "--target") {
      options.target = value;
    } else if (flag == "--steps") {
      options.steps = std::stoi(value);
    } else if (flag == "--deadline-ms") {
      options.deadline_ms = std::stoi(value);
    } else if (flag == "--client-id") {
      options.client_id = value;
    } else {
      throw Failure("unknown flag " + flag +
                    " (expected --target, --steps, --deadline-ms, --client-id)");
    }
  }
  return options;
}

// A session id is a credential: what the example prints shows its first characters only.
std::string logged_id(const std::string& session_id) { return session_id.substr(0, 8); }

// A fresh context per call (a ClientContext must not be reused) with its own deadline.
std::unique_ptr<grpc::ClientContext> context_for(const Options& options) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(options.deadline_ms));
  if (!options.token.empty()) context->AddMetadata("authorization", "Bearer " + options.token);
  return context;
}

// Throws with the status code (number and name), message and the coordinator's reason.
void check(const grpc::Status& status, const grpc::ClientContext& context, const char* call) {
  if (status.ok()) return;
  static const char* const names[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int code = status.error_code();
  std::string text = std::string(call) + " failed: status " + std::to_string(code) + " " +
                     (code >= 0 && code <= 16 ? names[code] : "?") + ": " +
                     status.error_message();
  const auto& trailers = context.GetServerTrailingMetadata();
  if (auto reason = trailers.find("actionmesh-error"); reason != trailers.end()) {
    text += " (reason: " + std::string(reason->second.data(), reason->second.size()) + ")";
  } else {
    text += " (no coordinator reason: the call may not have reached one)";
  }
  throw Failure(text);
}

// A float32 tensor [values.size()]: raw little-endian bytes, as tensor.proto says.
v1::Tensor float_tensor(const std::vector<float>& values) {
  static_assert(sizeof(float) == 4, "float32 expected");
  v1::Tensor tensor;
  tensor.set_dtype(v1::DTYPE_FLOAT32);
  tensor.add_shape(static_cast<int64_t>(values.size()));
  tensor.set_data(values.data(), values.size() * sizeof(float));
  return tensor;
}

// The action as floats, after checking it is float32 [horizon, joints] and all finite.
std::vector<float> checked_action(const v1::StepReply& reply, const v1::ActionSpec& spec) {
  const v1::Tensor& action = reply.action();
  const std::string where = "step " + std::to_string(reply.seq()) + ": ";
  if (action.dtype() != v1::DTYPE_FLOAT32) throw Failure(where + "action is not float32");
  if (action.shape_size() != 2 || action.shape(0) != spec.horizon() ||
      action.shape(1) != spec.joints()) {
    throw Failure(where + "action shape is not [horizon=" + std::to_string(spec.horizon()) +
                  ", joints=" + std::to_string(spec.joints()) + "]");
  }
  const size_t count = static_cast<size_t>(spec.horizon()) * spec.joints();
  if (action.data().size() != count * sizeof(float)) {
    throw Failure(where + "action has " + std::to_string(action.data().size()) +
                  " bytes, not " + std::to_string(count * sizeof(float)));
  }
  std::vector<float> values(count);
  std::memcpy(values.data(), action.data().data(), action.data().size());
  if (!std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); })) {
    throw Failure(where + "action has a non-finite value");
  }
  return values;
}

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t index = static_cast<size_t>(q * static_cast<double>(values.size() - 1) + 0.5);
  return values[index];
}

// Closes the session when it goes out of scope, also after a failure mid-run.
class Session {
 public:
  Session(v1::SessionService::Stub& stub, const Options& options)
      : stub_(stub), options_(options) {
    v1::OpenSessionRequest request;
    request.set_client_id(options.client_id);
    auto context = context_for(options);
    check(stub_.OpenSession(context.get(), request, &opened_), *context, "OpenSession");
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() {
    v1::CloseSessionRequest request;
    request.set_session_id(opened_.session_id());
    v1::CloseSessionReply reply;
    auto context = context_for(options_);
    try {
      check(stub_.CloseSession(context.get(), request, &reply), *context, "CloseSession");
      std::printf("closed session %s\n", logged_id(opened_.session_id()).c_str());
    } catch (const Failure& failure) {  // the session's TTL ends it anyway
      std::fprintf(stderr, "%s\n", failure.what());
    }
  }
  const v1::OpenSessionReply& opened() const { return opened_; }

 private:
  v1::SessionService::Stub& stub_;
  const Options& options_;
  v1::OpenSessionReply opened_;
};

void run(const Options& options) {
  auto channel = grpc::CreateChannel(options.target, grpc::InsecureChannelCredentials());
  auto stub = v1::SessionService::NewStub(channel);
  Session session(*stub, options);
  const v1::ActionSpec& spec = session.opened().action_spec();
  std::printf("opened session %s model %s: observation [%u], action [%u, %u]\n",
              session.opened().session_id().c_str(), session.opened().model_version().c_str(),
              spec.observation_dim(), spec.horizon(), spec.joints());

  std::vector<double> latencies_ms;
  std::map<v1::ServeMode, int> modes;
  std::vector<float> observation(spec.observation_dim());
  for (uint64_t seq = 1; seq <= static_cast<uint64_t>(options.steps); ++seq) {
    for (size_t i = 0; i < observation.size(); ++i) {  // stands in for the robot's sensors
      observation[i] = static_cast<float>(std::sin(0.1 * static_cast<double>(seq + i)));
    }
    v1::StepRequest request;
    request.set_session_id(session.opened().session_id());
    request.set_seq(seq);
    request.set_tick(seq);
    request.set_observation_id(seq);
    request.set_priority(v1::PRIORITY_NORMAL);
    *request.mutable_observation() = float_tensor(observation);
    v1::StepReply reply;
    auto context = context_for(options);
    const auto start = Clock::now();
    const grpc::Status status = stub->Step(context.get(), request, &reply);
    latencies_ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    check(status, *context, "Step");
    if (reply.seq() != seq) {
      throw Failure("step " + std::to_string(seq) + ": reply has seq " +
                    std::to_string(reply.seq()));
    }
    if (reply.serve_mode() == v1::SERVE_MODE_UNSPECIFIED) {
      throw Failure("step " + std::to_string(seq) + ": reply has no serve mode");
    }
    checked_action(reply, spec);  // a robot would hand this chunk to its action buffer
    ++modes[reply.serve_mode()];
  }
  std::printf("SUMMARY steps=%zu p50_ms=%.3f p99_ms=%.3f full=%d early_exit=%d fallback=%d "
              "session=%s\n",
              latencies_ms.size(), percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.99),
              modes[v1::SERVE_MODE_FULL], modes[v1::SERVE_MODE_EARLY_EXIT], modes[v1::SERVE_MODE_FALLBACK],
              logged_id(session.opened().session_id()).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    run(parse(argc, argv));
  } catch (const Failure& failure) {
    std::fprintf(stderr, "error: %s\n", failure.what());
    return 1;
  } catch (const std::exception& error) {  // e.g. std::stoi on a bad flag value
    std::fprintf(stderr, "error: %s\n", error.what());
    return 2;
  }
  return 0;
}
