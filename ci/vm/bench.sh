# Guest steps of ci/vm-bench, sourced by /init after every NVMe controller is bound to
# vfio-pci. ci/vm/harness.py fills in @BDF@ (the null-co controller), @FIO_BDF@ (the same
# with dots, as fio wants it) and @SECONDS@.
# Each run_step is judged by name; its output must contain the JSON key "iops" (`--json`)
# or a line `iops=<number>`.
BENCH="nvme-dio bench --workload randread --io-size 4k --time @SECONDS@ --warmup 2 --json"

run_step vfio-qd1 $BENCH --device @BDF@ --queue-depth 1
run_step vfio-qd32 $BENCH --device @BDF@ --queue-depth 32

# fio itself, the same workload: the nvme-dio engine (fio/) through VFIO now, fio's io_uring
# engine on the kernel's driver below. fio spells the PCI address with dots.
FIO="fio --thread=1 --name=randread --rw=randread --bs=4k --time_based --runtime=@SECONDS@ --ramp_time=2 --output-format=json"
run_step fio-nvme-dio-qd1 $FIO --ioengine=external:/lib/nvme-dio/libnvme_dio_fio.so --filename=@FIO_BDF@ --iodepth=1
run_step fio-nvme-dio-qd32 $FIO --ioengine=external:/lib/nvme-dio/libnvme_dio_fio.so --filename=@FIO_BDF@ --iodepth=32

# The same controller through the kernel: its nvme driver is built in.
bind_kernel @BDF@
run_step io_uring-qd1 $BENCH --engine io_uring --device /dev/nvme0n1 --queue-depth 1
run_step io_uring-qd32 $BENCH --engine io_uring --device /dev/nvme0n1 --queue-depth 32
run_step fio-io_uring-qd1 $FIO --ioengine=io_uring --direct=1 --filename=/dev/nvme0n1 --iodepth=1
run_step fio-io_uring-qd32 $FIO --ioengine=io_uring --direct=1 --filename=/dev/nvme0n1 --iodepth=32
