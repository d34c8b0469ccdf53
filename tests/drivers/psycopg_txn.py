"""psycopg 3 through pgtenant in transaction pooling: every query is a
server-side prepared statement (prepare_threshold=0), the driver's small
statement cache (prepared_max=3) makes it DEALLOCATE as it goes, and several
connections interleave on few server connections. Prints 'ok <count>'."""

import sys
import threading

import psycopg

conninfo = sys.argv[1]
errors = []
done = []


def worker(n: int) -> None:
    try:
        with psycopg.connect(conninfo, prepare_threshold=0, autocommit=True) as conn:
            conn.prepared_max = 3
            pids = set()
            for i in range(60):
                k = i % 5  # five texts for a cache of three: evictions and re-prepares
                row = conn.execute(f"SELECT %s::int * {k + 1} + {n}, pg_backend_pid()", (i,)).fetchone()
                if row[0] != i * (k + 1) + n:
                    errors.append(f"worker {n}: got {row[0]} for {i}")
                pids.add(row[1])
            with conn.transaction():
                conn.execute("INSERT INTO contacts(name) VALUES (%s)", (f"w{n}",))
                got = conn.execute("SELECT count(*) FROM contacts WHERE name = %s", (f"w{n}",)).fetchone()[0]
                if got != 1:
                    errors.append(f"worker {n}: inserted row not visible in its transaction")
            done.append(len(pids))
    except Exception as e:  # noqa: BLE001 - report everything
        errors.append(f"worker {n}: {type(e).__name__}: {e}")


threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"ok {len(done)} switched={sum(1 for p in done if p > 1)}")
