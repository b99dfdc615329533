/* The floor any process scan pays: read /proc/<pid>/stat for every pid, nothing else.
 * Usage: floor PASSES — prints one line of JSON: {"passMs":[…],"pids":N}.
 * Built by bench/run.mjs with `cc -O2` into bench/.cache/. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  int passes = argc > 1 ? atoi(argv[1]) : 10;
  char path[64], buf[4096];
  int pids = 0;
  printf("{\"passMs\":[");
  for (int i = 0; i < passes; i++) {
    double t0 = now_ms();
    DIR *d = opendir("/proc");
    if (!d) return 1;
    struct dirent *e;
    pids = 0;
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
      int fd = open(path, O_RDONLY);
      if (fd < 0) continue; /* vanished */
      if (read(fd, buf, sizeof buf) > 0) pids++;
      close(fd);
    }
    closedir(d);
    printf("%s%.4f", i ? "," : "", now_ms() - t0);
  }
  printf("],\"pids\":%d}\n", pids);
  return 0;
}
