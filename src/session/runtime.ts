// Config → what a run needs, built once: the policy (classifier and planner rules), the
// process-table port (handed to sources and effects alike) and the plan context (who the
// watchdog is: never signalled). Every command and the daemon start here.

import { policyFromConfig, type Config } from '../config/schema.js';
import type { PlanContext } from '../core/plan.js';
import type { Policy } from '../core/types.js';
import { selfPlanContext } from '../effects/self.js';
import type { ProcessPort } from '../sources/process-port.js';
import { processPortFor } from '../sources/default-port.js';

export interface Runtime {
  policy: Policy;
  processes: ProcessPort;
  /** Why this process source (doctor). */
  processSourceWhy: string;
  planContext: PlanContext;
}

export function runtimeFromConfig(config: Config): Runtime {
  const { port: processes, why } = processPortFor(config.processSource, config.procRoot);
  return { policy: policyFromConfig(config), processes, processSourceWhy: why, planContext: selfPlanContext(config.allowOtherUids, processes) };
}
