# Guest steps of ci/vm-bench, sourced by /init after every NVMe controller is bound to
# vfio-pci. ci/vm/harness.py fills in @BDF@ (the null-co controller) and @SECONDS@.
# Each run_step is judged by name; its output must contain a line `iops=<number>` (a number
# after the word IOPS also works). Adjust the flags here when the CLI's names differ.
BENCH="nvme-dio bench --rw randread --bs 4096 --time @SECONDS@"

run_step vfio-qd1 $BENCH --device @BDF@ --qd 1
run_step vfio-qd32 $BENCH --device @BDF@ --qd 32

# The same controller through the kernel: its nvme driver is built in.
bind_kernel @BDF@
run_step io_uring-qd1 $BENCH --engine io_uring --device /dev/nvme0n1 --qd 1
run_step io_uring-qd32 $BENCH --engine io_uring --device /dev/nvme0n1 --qd 32
