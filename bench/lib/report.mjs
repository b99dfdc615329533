// The printed table, the markdown for bench/README.md, and the targets of the issue.

const MiB = (b) => (Number.isFinite(b) ? `${(b / 2 ** 20).toFixed(1)} MiB` : '—');
const f = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '—');
const msText = (s) => (s ? `${f(s.p50)} / ${f(s.p95)} ms` : '—');
const runsLabel = (n) => (n >= 1e6 ? `${n / 1e6}M` : `${n / 1e3}k`);
const x = (v) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '—');

export function targets(r) {
  const out = [];
  const big = r.big;
  if (big) {
    const store = big.storeRatio1MOver10k.ofP50s;
    out.push({
      target: `store part flat in history: ${runsLabel(r.config.bigRuns)} runs within 1.5× of 10k`,
      value: `${x(store)} (p50 ${f(big.parts.store.p50, 2)} vs ${f(big.partsSmallStore.store.p50, 2)} ms)`,
      met: store <= 1.5,
    });
    const cFloor = big.floor.cPass?.p50;
    const vsC = big.cycle.p50 / cFloor;
    const vsNode = big.cycle.p50 / big.floor.node.p50;
    out.push({
      target: 'cycle p50 within 2× of the floor (stat of every pid)',
      value: `${x(vsC)} of the C floor (${f(cFloor, 2)} ms), ${x(vsNode)} of the Node floor (${f(big.floor.node.p50, 2)} ms)`,
      met: Number.isFinite(vsC) ? vsC <= 2 : vsNode <= 2,
      judgedOn: Number.isFinite(vsC) ? 'C floor' : 'Node floor',
    });
    if (big.anchor) {
      const ratio = big.cycle.p50 / big.anchor.p50;
      out.push({
        target: 'cycle at most half the process-exporter scrape',
        value: `${x(ratio)} (${f(big.cycle.p50)} vs ${f(big.anchor.p50)} ms)`,
        met: ratio <= 0.5,
      });
    } else {
      out.push({ target: 'cycle at most half the process-exporter scrape', value: `skipped: ${r.anchorInfo?.error ?? 'no anchor'}`, met: null });
    }
  }
  if (r.latency) {
    for (const [mode, l] of Object.entries(r.latency.modes)) {
      if (mode === 'interval') continue;
      out.push({ target: `detection latency p95 ≤ 1 s (${mode})`, value: `${f(l.p95)} ms`, met: l.p95 <= 1000 });
    }
  }
  if (r.reap) {
    out.push({
      target: `${r.reap.trees} leaked trees reaped at once: wall ≤ 10 s, CPU ≤ 20 ms per tree`,
      value: `${f(r.reap.wallMs / 1000, 2)} s wall, ${f(r.reap.cpuMsPerTree)} ms CPU per tree (${r.reap.ok}/${r.reap.planned} ok, ${r.reap.processesAtStart} processes)`,
      met: r.reap.ok === r.reap.trees && r.reap.wallMs <= 10_000 && r.reap.cpuMsPerTree <= 20,
    });
  }
  for (const [variant, s] of Object.entries(r.soak ?? {})) {
    out.push({
      target: `soak: daemon RSS within ±5 % after warm-up (${variant === 'default' ? 'default node flags' : s.nodeFlags.join(' ')})`,
      value: `max deviation ${f(s.maxDeviationPct)} % (medians of tenths: ${f(s.windowMedianMaxDeviationPct)} %), drift ${f(s.driftPct)} % over ${s.jobs.toLocaleString('en')} jobs`,
      met: s.maxDeviationPct <= 5,
    });
  }
  return out;
}

function rows(r) {
  const out = [];
  const add = (a, b, c = '') => out.push([a, b, c]);
  const sep = (title) => out.push([`— ${title}`, '', '']);
  for (const key of ['small', 'big']) {
    const p = r[key];
    if (!p) continue;
    sep(`${p.name}: ${p.processes.toLocaleString('en')} processes, store ${(r.config.bigRuns).toLocaleString('en')} runs (p50 / p95, ${p.iterations} cycles)`);
    add('cycle (ProjectSession.collect)', msText(p.cycle), `verdicts ${JSON.stringify(p.verdicts)}`);
    add('  sum of the parts (instrumented copy)', msText(p.instrumentedTotal), 'same sources, same order, timed one by one');
    add('  processes (readProcessTable)', msText(p.parts.processes), `status read for ${p.detailedProcesses} of them; without any status reads ${msText(p.processesWithoutDetails)}`);
    add('  store (StoreReader.read)', msText(p.parts.store), `10k-run store: ${msText(p.partsSmallStore.store)}`);
    add('  pid files', msText(p.parts.pidfiles));
    add('  server.pid + server', `${f(p.parts.serverFile.p50, 2)} + ${f(p.parts.server.p50, 2)} ms`);
    add('  classify', msText(p.parts.classify));
    add('  plan', msText(p.parts.plan));
    add('cycle with the 10k-run store', msText(p.cycleSmallStore));
    add(`store ${runsLabel(r.config.bigRuns)} / 10k (p50s; median of pairs)`, `${x(p.storeRatio1MOver10k.ofP50s)}; ${x(p.storeRatio1MOver10k.medianOfPairs)}`, 'target ≤ 1.5×');
    add(`first read (full pass) ${runsLabel(r.config.bigRuns)} / 10k`, `${f(p.firstRead.storeBigMs)} / ${f(p.firstRead.storeSmallMs)} ms`, 'once per daemon start (and hourly)');
    add('CPU per cycle', `${f(p.cpuSecondsPerCycle * 1000, 2)} ms`, `CPU/wall ${f(p.cpuPerWall, 2)}`);
    add('floor: C stat loop (in-process pass)', p.floor.cPass ? msText(p.floor.cPass) : '—', p.floor.cProcessWall ? `whole process ${f(p.floor.cProcessWall.p50)} ms` : '');
    add('floor: Node readFileSync loop', msText(p.floor.node));
    add('cycle / floor (p50)', `${x(p.cycle.p50 / (p.floor.cPass?.p50 ?? NaN))} C, ${x(p.cycle.p50 / p.floor.node.p50)} Node`, 'target ≤ 2×');
    if (p.anchor) add('anchor: process-exporter scrape', msText(p.anchor), `${p.anchor.processesGrouped} processes grouped`);
    if (p.anchor) add('cycle / anchor (p50)', x(p.cycle.p50 / p.anchor.p50), 'target ≤ 0.5×');
  }
  if (r.big && r.small) {
    sep(`scaling in processes: ${r.small.processes} → ${r.big.processes}`);
    add('cycle', x(r.big.cycle.p50 / r.small.cycle.p50));
    add('  processes part', x(r.big.parts.processes.p50 / r.small.parts.processes.p50));
    add('  store part', x(r.big.parts.store.p50 / r.small.parts.store.p50));
    add('  classify', x(r.big.parts.classify.p50 / r.small.parts.classify.p50));
    add('  C floor', x(r.big.floor.cPass?.p50 / r.small.floor.cPass?.p50));
  }
  if (r.daemon) {
    sep('daemon (`stepwise-watchdog run --observe-only --interval 0.5`, full host)');
    for (const d of Object.values(r.daemon)) {
      const store = d.label.startsWith('big') ? runsLabel(r.config.bigRuns) : '10k';
      const flags = d.nodeFlags?.length ? `, ${d.nodeFlags.join(' ')}` : '';
      add(`RSS, ${store}-run store${flags} (median)`, MiB(d.rssMedianBytes), `${MiB(d.rssMinBytes)}–${MiB(d.rssMaxBytes)}; ${d.cycles} cycles, mean ${f(d.cycleMeanMs)} ms, CPU ${f(d.cpuSecondsPerCycle * 1000, 1)} ms/cycle`);
    }
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
  for (const t of r.targets) lines.push(`  ${t.met === null ? 'SKIP' : t.met ? 'met ' : 'MISS'}  ${t.target}: ${t.value}`);
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
  lines.push('', '**Targets**', '', '| target | result | |', '|---|---|---|');
  for (const t of r.targets) lines.push(`| ${t.target} | ${t.value} | ${t.met === null ? 'skipped' : t.met ? 'met' : '**missed**'} |`);
  return `${lines.join('\n')}\n`;
}
