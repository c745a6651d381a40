# Guest steps of ci/vm-bench, sourced by /init after every NVMe controller is bound to
# vfio-pci. ci/vm/harness.py fills in @BDF@ (the null-co controller) and @SECONDS@.
# Each run_step is judged by name; its output must contain the JSON key "iops" (`--json`)
# or a line `iops=<number>`.
BENCH="nvme-dio bench --workload randread --io-size 4k --time @SECONDS@ --warmup 2 --json"

run_step vfio-qd1 $BENCH --device @BDF@ --queue-depth 1
run_step vfio-qd32 $BENCH --device @BDF@ --queue-depth 32

# The same controller through the kernel: its nvme driver is built in.
bind_kernel @BDF@
run_step io_uring-qd1 $BENCH --engine io_uring --device /dev/nvme0n1 --queue-depth 1
run_step io_uring-qd32 $BENCH --engine io_uring --device /dev/nvme0n1 --queue-depth 32
