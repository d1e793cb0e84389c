// The npm dependencies of validate.mjs, re-exported.
//
// ESM ignores NODE_PATH, and bare imports resolve from the importing file's
// folder. validate.sh installs package.json's pins into BUILD_DIR/npm-k8s and
// copies this file there, so these imports resolve against that node_modules;
// validate.mjs then imports this file by its absolute path (--deps).
import * as yaml from 'yaml';
import * as coreV1 from 'kubernetes-models/v1';
import * as appsV1 from 'kubernetes-models/apps/v1';
import * as batchV1 from 'kubernetes-models/batch/v1';
import * as policyV1 from 'kubernetes-models/policy/v1';
import * as autoscalingV2 from 'kubernetes-models/autoscaling/v2';

export { yaml };

// apiVersion -> the kubernetes-models module whose classes validate it.
export const models = {
  v1: coreV1,
  'apps/v1': appsV1,
  'batch/v1': batchV1,
  'policy/v1': policyV1,
  'autoscaling/v2': autoscalingV2,
};
