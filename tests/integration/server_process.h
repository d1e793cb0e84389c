// Test helper: runs a real imagesearch-query binary as a child process on
// loopback, and tells its port (read from the "listening on port N" line).
#ifndef IMAGESEARCH_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define IMAGESEARCH_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace imagesearch::testing {

class ServerProcess {
 public:
  // Starts `binary` with `args` (plus --port=0 --host=127.0.0.1); stderr goes
  // to `log_path`. Returns once the port is known, or with port() == 0.
  ServerProcess(const std::string& binary, std::vector<std::string> args,
                const std::string& log_path) {
    int out[2];
    if (::pipe(out) != 0) return;
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      // The server dies with the test process, also when that ends without
      // running the destructor (a sanitizer's halt_on_error, a crash,
      // ctest's kill at its timeout); otherwise it would keep taking CPU
      // from every test and CI stage after it. The signal comes when the
      // thread that forked exits: start servers from a thread that outlives
      // them (every caller does so from its main thread).
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // The test is gone already.
      ::dup2(out[1], STDOUT_FILENO);
      int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (log >= 0) ::dup2(log, STDERR_FILENO);
      ::close(out[0]);
      args.insert(args.begin(), binary);
      args.push_back("--port=0");
      args.push_back("--host=127.0.0.1");
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(binary.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    FILE* f = ::fdopen(out[0], "r");
    char line[256];
    if (f != nullptr && std::fgets(line, sizeof(line), f) != nullptr) {
      std::sscanf(line, "listening on port %d", &port_);
    }
    stdout_ = f;
  }

  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (stdout_ != nullptr) std::fclose(stdout_);
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool Alive() const { return pid_ > 0 && !exited_ && ::kill(pid_, 0) == 0; }

  // Sends SIGTERM and returns the exit status (-1 if it did not exit in time).
  int Terminate() {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool exited_ = false;
  FILE* stdout_ = nullptr;
};

}  // namespace imagesearch::testing

#endif  // IMAGESEARCH_TESTS_INTEGRATION_SERVER_PROCESS_H_
