"""The kernel matrix: run the live test suite on several kernels and tabulate the results.

Layers, so that the local VM runner and users' Vagrant boxes share everything but how a
kernel is booted:

- :mod:`.suite` runs the live suite on the kernel it is running on (a guest, a Vagrant box,
  or the host) and writes one ``result.json`` plus junit XML and the run's kernel log. It
  never boots anything.
- :mod:`.kernel_log` reads that kernel log and finds the splats in it (WARN, BUG, oops,
  RCU stalls, hung tasks...): a kernel that logged one fails its row.
- :mod:`.table` reads any number of result directories and prints the module-by-kernel table.
- :mod:`.kernels` fetches Debian kernels and their headers without installing them, and
  :mod:`.guest` boots one under qemu with virtme-ng and runs :mod:`.suite` inside. These two
  are the local runner only.
"""
