"""Count the primes of every range file, and which worker processes found them."""

import sys

total = 0
workers = set()
for path in sys.argv[1:]:
    with open(path) as f:
        head = f.readline().split()
    total += int(head[1])
    workers.add(head[-1])
print(f"{total} primes in {len(sys.argv) - 1} ranges, found by {len(workers)} worker process(es)")
