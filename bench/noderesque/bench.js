// node-resque side of bench/run.sh. N jobs are pre-enqueued with
// Queue.enqueue, then C node-resque Workers in this one process (each with
// its own Redis connection, like a MultiWorker at a fixed size) drain them
// with a no-op job, timed from starting the workers until the N-th "success"
// event. Worker `timeout` (the sleep after finding every queue empty) is
// BENCH_TIMEOUT_MS, default 5 ms instead of node-resque's 5000 ms; a busy
// worker polls again right after each job, so it only matters at the edges.
//
// Env: REDIS (host:port), DB, N, C. Prints:
//   RESULT node-resque <n> <c> <seconds> <jobs/s>
"use strict";
const os = require("os");
const { Queue, Worker } = require("node-resque");

const [host, port] = (process.env.REDIS || "127.0.0.1:6379").split(":");
const database = Number(process.env.DB || 15);
const n = Number(process.env.N || 20000);
const c = Number(process.env.C || 8);
const timeout = Number(process.env.BENCH_TIMEOUT_MS || 5);
const connection = { host, port: Number(port), database, namespace: "resque" };

function payload(i) {
  const job = 1 + (i % 50);
  return { buildId: 100000 + i, jobId: job, blockedBy: String(job), blockedBySameJob: true, blockedBySameJobWaitTime: 5, virtualJob: false };
}

async function main() {
  const queue = new Queue({ connection });
  queue.on("error", (e) => { throw e; });
  await queue.connect();
  // Flush only a DB that is empty or already the benchmark's (sentinel key).
  const redis = queue.connection.redis;
  // connect() itself wrote <ns>:connection_test_key; that one doesn't count.
  const size = (await redis.dbsize()) - (await redis.exists(queue.connection.key("connection_test_key")));
  if (size > 0 && !(await redis.exists("queue-worker-bench"))) {
    throw new Error(`redis DB ${database} holds ${size} keys the benchmark did not write; choose an empty DB with DB=`);
  }
  await redis.flushdb();
  await redis.set("queue-worker-bench", "1");
  await queue.connect(); // re-writes connection_test_key, as a fresh client would
  const batch = 500;
  for (let i = 0; i < n; i += batch) {
    const ps = [];
    for (let j = i; j < Math.min(n, i + batch); j++) ps.push(queue.enqueue("builds", "start", [payload(j)]));
    await Promise.all(ps);
  }

  const jobs = { start: { perform: async () => null } };
  let done = 0;
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const workers = [];
  for (let i = 0; i < c; i++) {
    const w = new Worker({ connection, queues: ["builds"], timeout, name: `${os.hostname()}-${i}:${process.pid}` }, jobs);
    w.on("error", (e) => { console.error(e); process.exit(1); });
    w.on("failure", (q, job, e) => { console.error("job failed", e); process.exit(1); });
    w.on("success", () => { if (++done === n) finish(); });
    await w.connect();
    workers.push(w);
  }
  const start = process.hrtime.bigint();
  for (const w of workers) w.start();
  await finished;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  await Promise.all(workers.map((w) => w.end()));

  const left = await queue.length("builds");
  const processed = Number(await queue.connection.redis.get(queue.connection.key("stat", "processed")));
  await queue.end();
  if (left !== 0 || processed !== n) throw new Error(`queue left ${left}, stat:processed ${processed}, want 0 and ${n}`);
  console.log(`RESULT node-resque ${n} ${c} ${seconds.toFixed(4)} ${(n / seconds).toFixed(1)}`);
}

// Exit explicitly: ended workers can leave timers behind that keep node alive.
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
