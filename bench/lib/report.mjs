// The printed table, the markdown for bench/README.md, and the targets of the issue.

const MiB = (b) => (Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(1)} MiB` : '—');
const f = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '—');
const msText = (s) => (s ? `${f(s.p50)} / ${f(s.p95)} ms` : '—');
const runsLabel = (n) => (n >= 1e6 ? `${n / 1e6}M` : `${n / 1e3}k`);
const x = (v) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '—');

const MiB64 = 64 * 2 ** 20;

export function targets(r) {
  const out = [];
  const add = (name, target, value, met, extra = {}) => out.push({ name, target, value, met, ...extra });
  const T = r.target;
  if (T) {
    const c = T.floor.cPass?.p50;
    const ratio = T.cycle.p50 / c;
    add('steady cycle vs the C floor', `p50 ≤ 0.5× the C full-scan floor (${T.processes.toLocaleString('en')} processes, ${T.trees} trees)`, Number.isFinite(ratio) ? `${x(ratio)} (${f(T.cycle.p50, 2)} vs ${f(c, 2)} ms; full sweep ${f(T.cycleFullSweep.p50, 1)} ms)` : `no C floor (${r.cFloor?.error ?? '?'})`, Number.isFinite(ratio) ? ratio <= 0.5 : null);
    const pct = T.defaultIntervalCpuPercentOfCore;
    add('CPU at the default interval', `≤ 0.2 % of a core (${T.processes.toLocaleString('en')} processes; --interval 15, a full sweep every 60 s)`, `${f(pct, 3)} % (targeted ${f(T.cpuSecondsPerCycle * 1000, 2)} ms × 3 + full sweep ${f(T.cpuSecondsPerFullSweep * 1000, 2)} ms per minute)`, Number.isFinite(pct) ? pct <= 0.2 : null);
  }
  const d = r.daemon?.big;
  if (d) add('daemon RSS', `≤ 64 MiB (observe-only, ${runsLabel(r.config.bigRuns)}-run store, default node flags)`, `${MiB(d.rssMedianBytes)} median (${MiB(d.rssMinBytes)}–${MiB(d.rssMaxBytes)})`, d.rssMedianBytes <= MiB64);
  if (r.reap) {
    const k = r.reap;
    add('reap: wall', `${k.trees} leaked trees at once: ≤ 10 s`, `${f(k.wallSeconds, 2)} s (${k.ok}/${k.planned} ok, ${k.processesOnHost.toLocaleString('en')} processes on the host)`, k.ok === k.trees && k.wallSeconds <= 10);
    add('reap: CPU per tree', '≤ 20 ms per tree', `${f(k.cpuMsPerTree, 1)} ms`, k.cpuMsPerTree <= 20);
  }
  if (r.latency) {
    for (const [mode, l] of Object.entries(r.latency.modes)) {
      add(`detection latency (${mode})`, `p95 ≤ 1 s${mode === 'interval' ? ` (--interval ${l.interval})` : ''}`, `${f(l.p95)} ms`, l.p95 <= 1000);
    }
  }
  for (const [variant, s] of Object.entries(r.soak ?? {})) {
    const flags = variant === 'default' ? 'default node flags' : s.nodeFlags.join(' ');
    add(`soak completes (${flags})`, `${r.config.soakJobs.toLocaleString('en')} jobs through a running daemon`, `${s.jobs.toLocaleString('en')} jobs in ${f(s.seconds, 0)} s${s.stoppedEarly ? ` — ${s.stoppedEarly}` : ''}`, s.jobs >= r.config.soakJobs && !s.stoppedEarly);
    add(`soak RSS (${flags})`, 'daemon RSS within ±5 % after warm-up', `max deviation ${f(s.maxDeviationPct)} % (medians of tenths: ${f(s.windowMedianMaxDeviationPct)} %), drift ${f(s.driftPct)} %`, s.maxDeviationPct <= 5);
  }
  const big = r.big;
  if (big) {
    const store = big.storeRatio1MOver10k.ofP50s;
    add('store flat in history', `${runsLabel(r.config.bigRuns)} runs within 1.5× of 10k`, `${x(store)} (p50 ${f(big.parts.store.p50, 2)} vs ${f(big.partsSmallStore.store.p50, 2)} ms)`, store <= 1.5);
    if (big.anchor) {
      const ratio = big.cycle.p50 / big.anchor.p50;
      add('cycle vs process-exporter', 'at most half its scrape', `${x(ratio)} (${f(big.cycle.p50)} vs ${f(big.anchor.p50)} ms)`, ratio <= 0.5);
    } else add('cycle vs process-exporter', 'at most half its scrape', `skipped: ${r.anchorInfo?.error ?? 'no anchor'}`, null);
  }
  return out;
}

function rows(r) {
  const out = [];
  const add = (a, b, c = '') => out.push([a, b, c]);
  const sep = (title) => out.push([`— ${title}`, '', '']);
  for (const key of ['small', 'target', 'big']) {
    const p = r[key];
    if (!p) continue;
    sep(`${p.name}: ${p.processes.toLocaleString('en')} processes, ${p.trees} trees, store ${r.config.bigRuns.toLocaleString('en')} runs (p50 / p95, ${p.iterations} cycles)`);
    add('cycle (ProjectSession.collect, default: targeted)', msText(p.cycle), `read ${p.processesRead.targeted} processes; modes ${JSON.stringify(p.modes.big)}; verdicts ${JSON.stringify(p.verdicts)}`);
    add('  processes', msText(p.parts.processes), 'source_duration_seconds{source="processes"}');
    add('  store', msText(p.parts.store), `10k-run store: ${msText(p.partsSmallStore.store)}`);
    add('  pid files', msText(p.parts.pidfiles));
    add('  server', msText(p.parts.server));
    add('  classify (rest of collect)', msText(p.parts.classify));
    add('  plan', msText(p.parts.plan));
    add('cycle, every one a full sweep', msText(p.cycleFullSweep), `read ${p.processesRead.full} processes; processes part ${msText(p.partsFullSweep.processes)}`);
    add('cycle with the 10k-run store', msText(p.cycleSmallStore));
    add(`store ${runsLabel(r.config.bigRuns)} / 10k (p50s; median of pairs)`, `${x(p.storeRatio1MOver10k.ofP50s)}; ${x(p.storeRatio1MOver10k.medianOfPairs)}`, 'target ≤ 1.5×');
    add(`first read (full pass) ${runsLabel(r.config.bigRuns)} / 10k`, `${f(p.firstRead.storeBigMs)} / ${f(p.firstRead.storeSmallMs)} ms`, 'once per daemon start (and hourly)');
    add('CPU per cycle: targeted / full sweep', `${f(p.cpuSecondsPerCycle * 1000, 2)} / ${f(p.cpuSecondsPerFullSweep * 1000, 2)} ms`, `CPU/wall ${f(p.cpuPerWall, 2)}`);
    if (p.defaultIntervalCpuPercentOfCore !== undefined) add('CPU at the default interval (15 s, full sweep every 60 s)', `${f(p.defaultIntervalCpuPercentOfCore, 3)} % of a core`, 'from the two CPU figures above');
    add('floor: C stat loop (in-process pass)', p.floor.cPass ? msText(p.floor.cPass) : '—', p.floor.cProcessWall ? `whole process ${f(p.floor.cProcessWall.p50)} ms` : '');
    add('floor: Node readFileSync loop', msText(p.floor.node));
    add('cycle / C floor (p50): targeted / full sweep', `${x(p.cycle.p50 / (p.floor.cPass?.p50 ?? NaN))} / ${x(p.cycleFullSweep.p50 / (p.floor.cPass?.p50 ?? NaN))}`, `Node floor: ${x(p.cycle.p50 / p.floor.node.p50)} / ${x(p.cycleFullSweep.p50 / p.floor.node.p50)}`);
    if (p.anchor) add('anchor: process-exporter scrape', msText(p.anchor), `${p.anchor.processesGrouped} processes grouped`);
    if (p.anchor) add('cycle / anchor (p50)', x(p.cycle.p50 / p.anchor.p50), 'target ≤ 0.5×');
  }
  if (r.big && r.small) {
    sep(`scaling: ${r.small.processes} processes / ${r.small.trees} trees → ${r.big.processes} / ${r.big.trees}`);
    add('cycle (targeted)', x(r.big.cycle.p50 / r.small.cycle.p50));
    add('cycle (full sweep)', x(r.big.cycleFullSweep.p50 / r.small.cycleFullSweep.p50));
    add('  store part', x(r.big.parts.store.p50 / r.small.parts.store.p50));
    add('  C floor', x(r.big.floor.cPass?.p50 / r.small.floor.cPass?.p50));
  }
  if (r.daemon) {
    sep('daemon (`stepwise-watchdog run --observe-only --interval 0.5`, full host)');
    const b = r.daemonBareNode;
    if (b?.rssBytes) add('floor: an idle `node -e` (anonymous / file-backed)', MiB(b.rssBytes), `${MiB(b.anonBytes)} / ${MiB(b.fileBytes)}`);
    for (const d of Object.values(r.daemon)) {
      const store = d.label.startsWith('big') ? runsLabel(r.config.bigRuns) : '10k';
      const flags = d.nodeFlags?.length ? `, ${d.nodeFlags.join(' ')}` : '';
      add(`RSS, ${store}-run store${flags} (median)`, MiB(d.rssMedianBytes), `${MiB(d.rssMinBytes)}–${MiB(d.rssMaxBytes)}; ${d.cycles} cycles, mean ${f(d.cycleMeanMs)} ms, CPU ${f(d.cpuSecondsPerCycle * 1000, 1)} ms/cycle`);
      if (d.rssAnonMedianBytes) add('  ↳ anonymous / file-backed', `${MiB(d.rssAnonMedianBytes)} / ${MiB(d.rssFileMedianBytes)}`, 'heap and malloc / the node executable and addons');
    }
  }
  if (r.reap) {
    const k = r.reap;
    sep(`reap: ${k.trees} leaked trees at once (${k.processesOnHost.toLocaleString('en')} processes on the host)`);
    add('wall (collect, plan, re-verify, SIGTERM, wait, audit, pid files)', `${f(k.wallSeconds, 2)} s`, `${k.ok}/${k.planned} ok; ${k.pidFilesRemoved} pid files removed${k.failedOrSkipped.length ? `; ${k.failedOrSkipped.join('; ')}` : ''}`);
    add('CPU per tree', `${f(k.cpuMsPerTree, 1)} ms`);
  }
  if (r.latency) {
    sep(`detection latency: job terminal → SIGTERM, terminal grace 0 (${r.latency.processesAtStart} processes)`);
    for (const [mode, l] of Object.entries(r.latency.modes)) {
      add(`${mode}${mode === 'interval' ? ` (--interval ${l.interval})` : ''}`, `${f(l.p50)} / ${f(l.p95)} ms`, `n=${l.n}, max ${f(l.max)} ms; pokes ${JSON.stringify(l.pokes)}`);
    }
  }
  for (const [variant, s] of Object.entries(r.soak ?? {})) {
    const flags = s.nodeFlags?.length ? s.nodeFlags.join(' ') : 'default node flags';
    sep(`soak (${flags}): ${s.jobs.toLocaleString('en')} jobs (${s.jobsPerTree} per tree), ${s.trees.toLocaleString('en')} trees reaped in ${f(s.seconds, 0)} s, ${s.processesAtStart} processes${s.stoppedEarly ? ` — ${s.stoppedEarly}` : ''}`);
    add(`RSS after warm-up (${f(s.warmupSeconds, 0)} s, ${(s.warmupJobs ?? 0).toLocaleString('en')} jobs): baseline → end`, `${MiB(s.rssBaselineBytes)} → ${MiB(s.rssEndBytes)}`, `drift ${f(s.driftPct)} %`);
    add('RSS after warm-up: min–max', `${MiB(s.rssMinBytes)}–${MiB(s.rssMaxBytes)}`, `max deviation ${f(s.maxDeviationPct)} %`);
    add('RSS, median of each tenth after warm-up', s.windows.map((w) => f(w.rssMedian / 2 ** 20, 0)).join(' '), `MiB; max deviation ${f(s.windowMedianMaxDeviationPct)} %`);
    add('V8 heap used, lowest in first / last tenth', `${MiB(s.heapUsedLowFirstWindowBytes)} / ${MiB(s.heapUsedLowLastWindowBytes)}`, 'about the live heap after GC: flat means no leak');
    add('reap throughput', `${f(s.treesPerSecond)} trees/s`, `CPU ${f(s.cpuSecondsPerTree * 1000)} ms per tree`);
  }
  return out;
}

export function renderTable(r) {
  const all = rows(r);
  const w0 = Math.max(...all.map((row) => row[0].length));
  const w1 = Math.max(...all.map((row) => (row[0].startsWith('— ') ? 0 : row[1].length)));
  const lines = [`\nstepwise-watchdog bench — ${r.mode} run, ${r.machine.cpus} CPUs, node ${r.machine.node}, ${r.totalSeconds} s\n`];
  for (const [a, b, c] of all) {
    if (a.startsWith('— ')) lines.push(`\n${a}`);
    else lines.push(`${a.padEnd(w0)}  ${b.padEnd(w1)}  ${c}`.trimEnd());
  }
  lines.push('\ntargets');
  for (const t of r.targets) lines.push(`  ${t.met === null ? 'SKIP' : t.met ? 'met ' : 'MISS'}  ${t.name}: ${t.target}: ${t.value}`);
  return `${lines.join('\n')}\n`;
}

export function renderMarkdown(r) {
  const code = r.code ? `, code ${r.code.commit}${r.code.uncommittedSrcFiles ? ` + ${r.code.uncommittedSrcFiles} uncommitted src files` : ''}` : '';
  const lines = [`Run: ${r.mode}${code}, ${r.startedAt}, ${r.machine.cpus} × ${r.machine.cpuModel}, ${r.machine.memGiB} GiB, Linux ${r.machine.kernel}, Node ${r.machine.node}, load ${r.machine.loadavgAtStart.join(' ')} → ${r.machine.loadavgAtEnd.join(' ')}, ${r.totalSeconds} s.`, ''];
  let open = false;
  for (const [a, b, c] of rows(r)) {
    if (a.startsWith('— ')) {
      if (open) lines.push('');
      lines.push(`**${a.slice(2)}**`, '', '| what | figure | note |', '|---|---|---|');
      open = true;
    } else lines.push(`| ${a.trim().replace(/^/, a.startsWith('  ') ? '↳ ' : '')} | ${b} | ${c.replace(/\|/g, '\\|')} |`);
  }
  lines.push('', '**Targets**', '', '| figure | target | result | |', '|---|---|---|---|');
  for (const t of r.targets) lines.push(`| ${t.name} | ${t.target} | ${t.value} | ${t.met === null ? 'skipped' : t.met ? 'met' : '**missed**'} |`);
  return `${lines.join('\n')}\n`;
}
