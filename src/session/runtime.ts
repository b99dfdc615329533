// Config → what a run needs, built once: the policy (classifier and planner rules), the
// process-table port (handed to sources and effects alike) and the plan context (who the
// watchdog is: never signalled). Every command and the daemon start here.

import { policyFromConfig, type Config } from '../config/schema.js';
import type { PlanContext } from '../core/plan.js';
import type { Policy } from '../core/types.js';
import { selfPlanContext } from '../effects/self.js';
import type { ProcessPort } from '../sources/process-port.js';
import { procPort } from '../sources/processes.js';

export interface Runtime {
  policy: Policy;
  processes: ProcessPort;
  planContext: PlanContext;
}

export function runtimeFromConfig(config: Config): Runtime {
  const processes = procPort(config.procRoot);
  return { policy: policyFromConfig(config), processes, planContext: selfPlanContext(config.allowOtherUids, processes) };
}
