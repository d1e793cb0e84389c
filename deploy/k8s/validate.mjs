// Offline validation of deploy/k8s: renders base, dev, prod and the sharded
// collection (the service and the indexing Jobs of each) with kubectl's
// built-in kustomize (or a
// standalone kustomize), v5 or later, validates every object against the
// Kubernetes API schemas (npm kubernetes-models), and asserts the invariants
// that a schema cannot see: probes on the gRPC port, Services and the PDB
// selecting the Deployment's pods, the HPA naming the Deployment after the
// name prefix, the Indexed Job's shard arguments, one snapshot share for
// readers and writers, prod's replica floor, images by digest, the replicas'
// snapshot verification and connection age, model instances sized by the
// pod's CPU request, the indexing Jobs' failure policies and deadlines, and,
// across environments, volume names and snapshot shares of their own. Then it checks itself on deliberately broken
// copies, each of which must be rejected: rendered objects changed in memory,
// and broken overlays written to disk and rendered by kustomize.
//
// With --release ENV DIR it checks a release instead: DIR/service.yaml and
// DIR/indexing.yaml as deploy/k8s/release.sh rendered them for ENV, whose
// images must be real digests (not the overlays' placeholder).
//
// With no kustomize v5 on PATH, K8S_KUSTOMIZE=auto (the default) prints why
// and exits 77 (ctest's skip code); K8S_KUSTOMIZE=require fails instead.
// --release needs no kustomize: release.sh has rendered already.
//
// Usage: node validate.mjs --deps BUILD_DIR/npm-k8s/deps.mjs [K8S_DIR]
//        node validate.mjs --deps BUILD_DIR/npm-k8s/deps.mjs --release ENV DIR
// (validate.sh installs the dependencies and runs this).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SERVICE = 'imagesearch.v1.ImageSearch';
// Model load + warm-up with --verify=sizes: measured 3.8-6.1 s with the default
// model (README "Start-up and snapshot verification"); 60 s leaves room for a
// large model read over NFS.
const MIN_STARTUP_BUDGET_S = 60;
// --max_connection_age_ms: clients move onto pods the HPA adds within about
// this long; below 10 s reconnects cost more than they spread.
const CONNECTION_AGE_MS = [10000, 120000];
// reindex.sh waits this long for each Job; a Job's own deadline must be
// shorter so that it fails by itself, with its logs, first.
const REINDEX_WAIT_S = 21600;
const PLACEHOLDER_DIGEST = `sha256:${'0'.repeat(64)}`;
const DIGEST_REF = /^[a-z0-9][a-z0-9._\-\/:]*@sha256:[0-9a-f]{64}$/;
const SHARD_ARG = /^--shard=\$\(JOB_COMPLETION_INDEX\)\/(\d+)$/;
const INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']";

// What each environment must render to. Names and namespaces are part of the
// contract: clients and the README use them. images: 'placeholder' (the
// committed overlays: only the pipeline sets a digest) or 'release' (what
// release.sh rendered: real digests only); base keeps the bare names.
const ENVS = [
  { env: 'base', serving: 'base', indexing: 'base/indexing', prefix: '', namespace: undefined,
    minReplicas: 1 },
  { env: 'dev', serving: 'overlays/dev', indexing: 'overlays/dev/indexing', prefix: 'dev-',
    namespace: 'imagesearch-dev', minReplicas: 1, images: 'placeholder' },
  { env: 'prod', serving: 'overlays/prod', indexing: 'overlays/prod/indexing', prefix: '',
    namespace: 'imagesearch', minReplicas: 3, images: 'placeholder' },
  // A collection of `shards` shard roots: per shard the replicas of
  // base/replicas/ (suffix -shard-<i>), and imagesearch-router in front.
  { env: 'sharded', serving: 'sharded', indexing: 'sharded/indexing', prefix: 'photos-',
    namespace: 'imagesearch-photos', minReplicas: 1, shards: 2, collection: 'photos',
    images: 'placeholder' },
];
const SHARD_LABEL = 'imagesearch.dev/shard';

// Exit code that ctest reads as "skipped" (SKIP_RETURN_CODE in tests/e2e).
const SKIP = 77;

function objectId(o) {
  const ns = o.metadata?.namespace ? `${o.metadata.namespace}/` : '';
  return `${o.kind} ${ns}${o.metadata?.name}`;
}

function flags(args) {
  const out = {};
  for (const a of args ?? []) {
    const m = /^--([a-z_]+)=(.*)$/.exec(a);
    if (m) out[m[1]] = m[2];
  }
  return out;
}

function selects(selector, labels, where, errors) {
  const ml = selector?.matchLabels;
  if (selector?.matchExpressions) errors.push(`${where}: matchExpressions are not checked; use matchLabels`);
  if (!ml || Object.keys(ml).length === 0) {
    errors.push(`${where}: empty selector`);
    return false;
  }
  return Object.entries(ml).every(([k, v]) => labels?.[k] === v);
}

// What is wrong with a container's image reference under `policy` (see
// ENVS), or undefined.
function imageProblem(image, policy) {
  if (policy === 'placeholder' && !image.endsWith(`@${PLACEHOLDER_DIGEST}`)) {
    return `image ${image}: the committed overlays carry the placeholder digest `
      + `${PLACEHOLDER_DIGEST.slice(0, 12)}...; only the pipeline sets a real one (deploy/k8s/release.sh)`;
  }
  if (policy === 'release' && (!DIGEST_REF.test(image) || image.endsWith(`@${PLACEHOLDER_DIGEST}`))) {
    return `image ${image} is not deployed by digest (registry/name@sha256:<64 hex>, not the `
      + 'placeholder): a tag is mutable';
  }
  return undefined;
}

// Checks shared by every pod template: hardening, resources and images.
function checkPod(where, pod, errors, e) {
  const expect = (cond, msg) => cond || errors.push(`${where}: ${msg}`);
  const psc = pod.securityContext ?? {};
  expect(pod.automountServiceAccountToken === false, 'automountServiceAccountToken must be false');
  for (const c of pod.containers ?? []) {
    const w = `container ${c.name}`;
    const bad = imageProblem(c.image ?? '', e.images);
    expect(!bad, `${w}: ${bad}`);
    // A digest names one image for good: a node that has it need not ask.
    expect(c.imagePullPolicy === 'IfNotPresent', `${w}: imagePullPolicy must be IfNotPresent (images are by digest)`);
    const sc = c.securityContext ?? {};
    expect((sc.runAsNonRoot ?? psc.runAsNonRoot) === true, `${w}: runAsNonRoot must be true`);
    expect(sc.readOnlyRootFilesystem === true, `${w}: readOnlyRootFilesystem must be true`);
    expect(sc.allowPrivilegeEscalation === false, `${w}: allowPrivilegeEscalation must be false`);
    expect((sc.capabilities?.drop ?? []).includes('ALL'), `${w}: capabilities must drop ALL`);
    expect((sc.seccompProfile ?? psc.seccompProfile)?.type === 'RuntimeDefault',
      `${w}: seccompProfile must be RuntimeDefault`);
    expect(c.resources?.requests?.cpu && c.resources?.requests?.memory,
      `${w}: needs cpu and memory requests`);
    expect(c.resources?.limits?.memory, `${w}: needs a memory limit`);
    for (const e of c.env ?? []) {
      const rf = e.valueFrom?.resourceFieldRef;
      if (rf) expect(rf.containerName === c.name, `${w}: env ${e.name} reads another container's resources`);
    }
  }
}

// What is wrong with how container `c`, which runs the model, sizes its model
// instances, or undefined. With no CPU limit there is no quota to read, so
// the binaries' default (one per CPU the process may use) follows the node's
// cores: the count must come from the container's own CPU request.
function modelInstancesProblem(c) {
  const value = flags(c.args).model_instances;
  const m = /^\$\(([A-Za-z0-9_]+)\)$/.exec(value ?? '');
  const rf = m && (c.env ?? []).find((x) => x.name === m[1])?.valueFrom?.resourceFieldRef;
  if (rf?.resource === 'requests.cpu' && rf.containerName === c.name && String(rf.divisor ?? '1') === '1') {
    return undefined;
  }
  return `--model_instances=${value ?? '(default: one per CPU of the node)'} must be $(VAR), VAR read from `
    + "this container's requests.cpu (divisor 1): with no CPU limit the default follows the node's cores";
}

// The volume mounted at `mountPath` in container `c`: {mount, volume}.
function mountAt(pod, c, mountPath) {
  const mount = (c.volumeMounts ?? []).find((m) => m.mountPath === mountPath);
  const volume = mount && (pod.volumes ?? []).find((v) => v.name === mount.name);
  return { mount, volume };
}

// The mount whose path contains `file` (the longest such mount path).
function mountFor(pod, c, file) {
  const mounts = (c.volumeMounts ?? []).filter((m) => file === m.mountPath
    || file.startsWith(m.mountPath.endsWith('/') ? m.mountPath : `${m.mountPath}/`));
  mounts.sort((a, b) => b.mountPath.length - a.mountPath.length);
  const mount = mounts[0];
  const volume = mount && (pod.volumes ?? []).find((v) => v.name === mount.name);
  return { mount, volume };
}

function checkNamespaces(objects, e, errors) {
  for (const o of objects) {
    const clusterScoped = o.kind === 'PersistentVolume';
    const want = clusterScoped ? undefined : e.namespace;
    if (o.metadata.namespace !== want) {
      errors.push(`${objectId(o)}: namespace ${o.metadata.namespace} (want ${want})`);
    }
    if (!o.metadata.name.startsWith(e.prefix)) errors.push(`${objectId(o)}: name lacks prefix '${e.prefix}'`);
  }
}

// The query service's invariants. Returns a list of errors.
export function checkServing(objects, e) {
  const errors = [];
  const expect = (cond, msg) => cond || errors.push(msg);
  const name = (n) => e.prefix + n;
  const find = (kind, n) => objects.find((o) => o.kind === kind && o.metadata.name === name(n));
  // The replicas' own objects; a sharded collection stamps them per shard.
  const own = (n) => n + (e.suffix ?? '');
  checkNamespaces(objects, e, errors);

  const dep = find('Deployment', own('imagesearch-query'));
  if (!dep) return [...errors, `no Deployment ${name(own('imagesearch-query'))}`];
  const D = `Deployment ${dep.metadata.name}`;
  const pod = dep.spec?.template?.spec ?? {};
  const podLabels = dep.spec?.template?.metadata?.labels ?? {};
  expect(selects(dep.spec.selector, podLabels, D, errors), `${D}: selector does not match its pod labels`);
  checkPod(D, pod, errors, e);
  const c = (pod.containers ?? []).find((x) => x.name === 'query');
  if (!c) return [...errors, `${D}: no container 'query'`];
  expect(JSON.stringify(c.command) === '["imagesearch-query"]', `${D}: must run imagesearch-query`);
  const port = (n) => (c.ports ?? []).find((p) => p.name === n)?.containerPort;
  const grpcPort = port('grpc');
  const httpPort = port('http');
  expect(grpcPort, `${D}: no container port named grpc`);
  expect(httpPort, `${D}: no container port named http`);
  const f = flags(c.args);
  expect(Number(f.port) === grpcPort, `${D}: --port=${f.port} is not the grpc container port ${grpcPort}`);
  expect(Number(f.http_port) === httpPort, `${D}: --http_port=${f.http_port} is not the http container port ${httpPort}`);
  expect(f.verify === 'sizes', `${D}: --verify=${f.verify ?? '(default: checksums)'}; replicas on the shared volume `
    + 'need --verify=sizes (checksums are taken once, at publish)');
  const age = Number(f.max_connection_age_ms);
  expect(age >= CONNECTION_AGE_MS[0] && age <= CONNECTION_AGE_MS[1],
    `${D}: --max_connection_age_ms=${f.max_connection_age_ms} must be set within ${CONNECTION_AGE_MS.join('..')} `
    + 'so clients spread onto pods the HPA adds');
  if (f.load_model !== 'false') {
    const bad = modelInstancesProblem(c);
    expect(!bad, `${D}: ${bad}`);
  }

  for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    const p = c[probe];
    if (!p?.grpc) {
      errors.push(`${D}: ${probe} must be a native grpc probe`);
      continue;
    }
    expect(p.grpc.port === grpcPort, `${D}: ${probe}.grpc.port ${JSON.stringify(p.grpc.port)} is not the grpc port ${grpcPort}`);
  }
  expect(c.readinessProbe?.grpc?.service === SERVICE, `${D}: readinessProbe must check service ${SERVICE}`);
  expect(c.startupProbe?.grpc?.service === SERVICE, `${D}: startupProbe must check service ${SERVICE}`);
  const sp = c.startupProbe ?? {};
  const budget = (sp.failureThreshold ?? 3) * (sp.periodSeconds ?? 10);
  expect(budget >= MIN_STARTUP_BUDGET_S, `${D}: startupProbe allows ${budget} s; model load + warm-up needs >= ${MIN_STARTUP_BUDGET_S} s`);

  const sleep = c.lifecycle?.preStop?.sleep?.seconds ?? 0;
  const graceS = Number(f.shutdown_grace_ms ?? 20000) / 1000;
  const tgp = pod.terminationGracePeriodSeconds ?? 30;
  expect(sleep >= 1, `${D}: needs a preStop sleep so endpoints update before SIGTERM`);
  expect(tgp >= sleep + graceS + 2, `${D}: terminationGracePeriodSeconds ${tgp} < preStop ${sleep} s + drain ${graceS} s + 2 s`);

  const tsc = pod.topologySpreadConstraints ?? [];
  for (const key of ['topology.kubernetes.io/zone', 'kubernetes.io/hostname']) {
    const t = tsc.find((x) => x.topologyKey === key);
    expect(t && selects(t.labelSelector, podLabels, D, errors), `${D}: no topology spread over ${key} selecting its pods`);
  }

  // The snapshot: a read-only mount of the ReadOnlyMany claim at (or, for a
  // shard, above) --snapshot_root.
  const root = f.snapshot_root;
  const { mount, volume } = e.suffix ? mountFor(pod, c, root) : mountAt(pod, c, root);
  expect(mount?.readOnly === true, `${D}: --snapshot_root=${root} is not a read-only mount`);
  const claim = volume?.persistentVolumeClaim;
  expect(claim?.claimName === name('imagesearch-snapshots') && claim.readOnly === true,
    `${D}: ${root} must mount claim ${name('imagesearch-snapshots')} read-only`);
  const pvc = find('PersistentVolumeClaim', 'imagesearch-snapshots');
  expect(pvc && JSON.stringify(pvc.spec?.accessModes) === '["ReadOnlyMany"]',
    `PersistentVolumeClaim ${name('imagesearch-snapshots')} must exist with accessModes [ReadOnlyMany]`);
  const pv = objects.find((o) => o.kind === 'PersistentVolume' && o.metadata.name === pvc?.spec?.volumeName);
  expect(pv && JSON.stringify(pv.spec?.accessModes) === '["ReadOnlyMany"]' && pv.spec?.nfs?.readOnly === true,
    `the claim's volume ${pvc?.spec?.volumeName} must be a read-only ReadOnlyMany nfs PersistentVolume`);

  // Services select the Deployment's pods and reach its named ports.
  const headless = find('Service', own('imagesearch-query-headless'));
  if (!headless) {
    errors.push(`no Service ${name(own('imagesearch-query-headless'))}`);
  } else {
    const H = `Service ${headless.metadata.name}`;
    expect(headless.spec?.clusterIP === 'None', `${H}: clusterIP must be None (headless, for client-side round_robin)`);
    expect(selects(headless.spec?.selector && { matchLabels: headless.spec.selector }, podLabels, H, errors),
      `${H}: selector does not select the Deployment's pods`);
    const gp = (headless.spec?.ports ?? []).find((p) => p.port === grpcPort);
    expect(gp && (gp.targetPort === 'grpc' || gp.targetPort === grpcPort),
      `${H}: needs port ${grpcPort} -> the grpc container port`);
  }
  const http = find('Service', own('imagesearch-query-http'));
  if (!http) {
    errors.push(`no Service ${name(own('imagesearch-query-http'))}`);
  } else {
    const S = `Service ${http.metadata.name}`;
    expect((http.spec?.type ?? 'ClusterIP') === 'ClusterIP' && http.spec?.clusterIP !== 'None', `${S}: must be a ClusterIP Service`);
    expect(selects(http.spec?.selector && { matchLabels: http.spec.selector }, podLabels, S, errors),
      `${S}: selector does not select the Deployment's pods`);
    const hp = (http.spec?.ports ?? []).find((p) => p.targetPort === 'http' || p.targetPort === httpPort);
    expect(hp, `${S}: needs a port -> the http container port`);
  }

  // The PDB covers the pods; the HPA scales the Deployment and owns its count.
  const pdbs = objects.filter((o) => o.kind === 'PodDisruptionBudget');
  const pdb = pdbs.find((o) => selects(o.spec?.selector, podLabels, `PodDisruptionBudget ${o.metadata.name}`, errors));
  expect(pdb, `no PodDisruptionBudget selects the pods of ${D}`);
  if (pdb) {
    const P = `PodDisruptionBudget ${pdb.metadata.name}`;
    const mu = pdb.spec.maxUnavailable;
    const ma = pdb.spec.minAvailable;
    expect((mu !== undefined) !== (ma !== undefined), `${P}: set exactly one of maxUnavailable, minAvailable`);
    if (mu !== undefined) expect(mu === 1 || mu === '1', `${P}: maxUnavailable should be 1`);
    if (ma !== undefined) expect(typeof ma === 'number' && ma < e.minReplicas, `${P}: minAvailable ${ma} blocks every eviction at ${e.minReplicas} replicas`);
  }
  const hpas = objects.filter((o) => o.kind === 'HorizontalPodAutoscaler');
  const hpa = hpas.find((o) => o.spec?.scaleTargetRef?.kind === 'Deployment'
    && o.spec.scaleTargetRef.name === dep.metadata.name && o.spec.scaleTargetRef.apiVersion === 'apps/v1');
  expect(hpa, `no HorizontalPodAutoscaler targets apps/v1 Deployment ${dep.metadata.name}`
    + (hpas.length ? ` (found targets: ${hpas.map((o) => o.spec?.scaleTargetRef?.name).join(', ')})` : ''));
  if (hpa) {
    const A = `HorizontalPodAutoscaler ${hpa.metadata.name}`;
    const min = hpa.spec.minReplicas ?? 1;
    expect(min <= hpa.spec.maxReplicas, `${A}: minReplicas ${min} > maxReplicas ${hpa.spec.maxReplicas}`);
    expect(min >= e.minReplicas, `${A}: minReplicas ${min}; ${e.env} needs at least ${e.minReplicas} replicas`);
    expect((hpa.spec.metrics ?? []).some((m) => m.type === 'Resource' && m.resource?.name === 'cpu'
      && m.resource.target?.type === 'Utilization'), `${A}: needs a CPU utilisation target`);
    expect(dep.spec.replicas === undefined, `${D}: sets spec.replicas, which every apply would reset under the HPA`);
  }
  return errors;
}

// A Job's deadline and pod failure policy: it ends by itself before
// reindex.sh stops waiting, and disruptions do not use up its retries.
function checkFailurePolicy(J, spec, errors) {
  const expect = (cond, msg) => cond || errors.push(msg);
  const deadline = spec.activeDeadlineSeconds;
  expect(Number.isInteger(deadline) && deadline > 0 && deadline < REINDEX_WAIT_S,
    `${J}: needs activeDeadlineSeconds below reindex.sh's ${REINDEX_WAIT_S} s wait (has ${deadline})`);
  const rules = spec.podFailurePolicy?.rules ?? [];
  expect(rules.some((r) => r.action === 'Ignore'
    && (r.onPodConditions ?? []).some((c) => c.type === 'DisruptionTarget')),
  `${J}: needs a podFailurePolicy rule that Ignores DisruptionTarget (evictions, preemption, drains)`);
  expect(spec.template?.spec?.restartPolicy === 'Never', `${J}: podFailurePolicy needs restartPolicy Never`);
}

// The indexing Jobs' invariants. Returns a list of errors.
export function checkIndexing(objects, e) {
  const errors = [];
  const expect = (cond, msg) => cond || errors.push(msg);
  const name = (n) => e.prefix + n;
  const find = (kind, n) => objects.find((o) => o.kind === kind && o.metadata.name === name(n));
  checkNamespaces(objects, e, errors);
  const rwClaim = name('imagesearch-snapshots-rw');
  const pvc = find('PersistentVolumeClaim', 'imagesearch-snapshots-rw');
  expect(pvc && JSON.stringify(pvc.spec?.accessModes) === '["ReadWriteMany"]',
    `PersistentVolumeClaim ${rwClaim} must exist with accessModes [ReadWriteMany]`);
  const pv = objects.find((o) => o.kind === 'PersistentVolume' && o.metadata.name === pvc?.spec?.volumeName);
  expect(pv?.spec?.nfs && pv.spec.nfs.readOnly !== true && JSON.stringify(pv.spec.accessModes) === '["ReadWriteMany"]',
    `the claim's volume ${pvc?.spec?.volumeName} must be a writable ReadWriteMany nfs PersistentVolume`);
  // A mount of the read-write claim: its subPath, or an error.
  const shareMount = (W, pod, c, p, writable) => {
    const { mount, volume } = mountFor(pod, c, p);
    if (!mount || volume?.persistentVolumeClaim?.claimName !== rwClaim) {
      errors.push(`${W}: ${p} is not on claim ${rwClaim}`);
      return undefined;
    }
    if (writable) expect(!mount.readOnly, `${W}: ${p} must be writable`);
    return `${mount.subPath ?? ''}${p.slice(mount.mountPath.length)}`;
  };

  const shards = find('Job', 'imagesearch-index-shards');
  let shardsOut;
  let model;
  if (!shards) {
    errors.push(`no Job ${name('imagesearch-index-shards')}`);
  } else {
    const J = `Job ${shards.metadata.name}`;
    const s = shards.spec ?? {};
    const pod = s.template?.spec ?? {};
    checkPod(J, pod, errors, e);
    expect(s.completionMode === 'Indexed', `${J}: completionMode must be Indexed`);
    expect(Number.isInteger(s.completions) && s.completions >= 1, `${J}: completions must be set`);
    expect(Number.isInteger(s.parallelism) && s.parallelism >= 1 && s.parallelism <= s.completions,
      `${J}: parallelism must be 1..completions`);
    expect(Number.isInteger(s.backoffLimitPerIndex) && s.backoffLimitPerIndex >= 1,
      `${J}: needs backoffLimitPerIndex >= 1 (retries counted per shard)`);
    expect(s.backoffLimit === undefined, `${J}: backoffLimit would be a second, Job-wide retry limit; use backoffLimitPerIndex`);
    expect(Number.isInteger(s.maxFailedIndexes), `${J}: needs maxFailedIndexes (the build needs every shard)`);
    checkFailurePolicy(J, s, errors);
    const c = (pod.containers ?? [])[0] ?? {};
    expect(JSON.stringify(c.command) === '["imagesearch-indexer"]', `${J}: must run imagesearch-indexer`);
    const shardArgs = (c.args ?? []).map((a) => SHARD_ARG.exec(a)).filter(Boolean);
    expect(shardArgs.length === 1, `${J}: args need --shard=$(JOB_COMPLETION_INDEX)/N`);
    if (shardArgs.length === 1) {
      expect(Number(shardArgs[0][1]) === s.completions, `${J}: --shard=.../${shardArgs[0][1]} but completions is ${s.completions}`);
    }
    const idx = (c.env ?? []).find((x) => x.name === 'JOB_COMPLETION_INDEX');
    expect(!idx || idx.valueFrom?.fieldRef?.fieldPath === INDEX_ANNOTATION,
      `${J}: env JOB_COMPLETION_INDEX must come from ${INDEX_ANNOTATION}`);
    const f = flags(c.args);
    expect(f.input && f.model && f.embeddings_out, `${J}: needs --input, --model and --embeddings_out`);
    if (f.input) shareMount(J, pod, c, f.input, false);
    if (f.model) model = [f.model, shareMount(J, pod, c, f.model, false)];
    if (f.embeddings_out) shardsOut = [f.embeddings_out, shareMount(J, pod, c, f.embeddings_out, true)];
  }

  const build = find('Job', 'imagesearch-snapshot-build');
  let root;
  if (!build) {
    errors.push(`no Job ${name('imagesearch-snapshot-build')}`);
  } else {
    const J = `Job ${build.metadata.name}`;
    const pod = build.spec?.template?.spec ?? {};
    checkPod(J, pod, errors, e);
    expect(build.spec?.completionMode !== 'Indexed', `${J}: must be a plain Job`);
    expect((build.spec?.backoffLimit ?? 6) >= 1, `${J}: backoffLimit must allow retries`);
    checkFailurePolicy(J, build.spec ?? {}, errors);
    const c = (pod.containers ?? [])[0] ?? {};
    expect(JSON.stringify(c.command) === '["imagesearch-snapshot"]' && c.args?.[0] === 'build',
      `${J}: must run imagesearch-snapshot build`);
    const f = flags(c.args);
    if (shardsOut) {
      expect(f.shards === shardsOut[0], `${J}: --shards=${f.shards} is not the shard Job's --embeddings_out=${shardsOut[0]}`);
      if (f.shards) expect(shareMount(J, pod, c, f.shards, false) === shardsOut[1], `${J}: ${f.shards} is not the share folder the shard Job writes`);
    }
    if (model) {
      expect(f.model === model[0], `${J}: --model=${f.model} is not the shard Job's ${model[0]}`);
      if (f.model) expect(shareMount(J, pod, c, f.model, false) === model[1], `${J}: ${f.model} is not the shard Job's model file`);
    }
    expect(f.root, `${J}: needs --root`);
    if (f.root) root = shareMount(J, pod, c, f.root, true);
  }

  const admin = find('CronJob', 'imagesearch-snapshot-admin');
  if (admin) {
    const C = `CronJob ${admin.metadata.name}`;
    expect(admin.spec?.suspend === true, `${C}: must be suspended (a template for kubectl create job --from)`);
    const pod = admin.spec?.jobTemplate?.spec?.template?.spec ?? {};
    checkPod(C, pod, errors, e);
    const c = (pod.containers ?? [])[0] ?? {};
    const f = flags(c.args);
    if (f.root && root !== undefined) {
      // A sharded collection's admin runs on one shard root at a time.
      const at = shareMount(C, pod, c, f.root, true);
      expect(at === root || (e.shards && new RegExp(`^${root}/shard-\\d+-of-${e.shards}$`).test(at)),
        `${C}: --root is not the build Job's snapshot root${e.shards ? ' or one of its shard roots' : ''}`);
    }
  }

  // The ingest service: one writer of the build Job's root, never two pods at once.
  const ingest = find('Deployment', 'imagesearch-ingest');
  if (!ingest) {
    errors.push(`no Deployment ${name('imagesearch-ingest')}`);
  } else {
    const D = `Deployment ${ingest.metadata.name}`;
    const pod = ingest.spec?.template?.spec ?? {};
    checkPod(D, pod, errors, e);
    expect(ingest.spec?.replicas === 1, `${D}: replicas must be 1 (one writer per root)`);
    expect(ingest.spec?.strategy?.type === 'Recreate',
      `${D}: strategy must be Recreate (the old pod holds the root's lock until it exits)`);
    const c = (pod.containers ?? [])[0] ?? {};
    expect(JSON.stringify(c.command) === '["imagesearch-indexer"]' && c.args?.[0] === 'serve',
      `${D}: must run imagesearch-indexer serve`);
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      expect(Number.isInteger(c[probe]?.grpc?.port), `${D}: ${probe} must be a native grpc probe`);
    }
    const f = flags(c.args);
    expect(f.root, `${D}: needs --root`);
    if (f.root && root !== undefined) {
      expect(shareMount(D, pod, c, f.root, true) === root, `${D}: --root is not the build Job's snapshot root`);
    }
  }

  return { errors, root };
}

// Readers and writers of one environment must use one share and one folder.
export function checkShared(serving, indexing, indexingRoot, e) {
  const errors = [];
  const share = (objects, suffix) => objects.find((o) => o.kind === 'PersistentVolume'
    && o.metadata.name === `${e.prefix}imagesearch-snapshots-${suffix}`)?.spec?.nfs;
  const ro = share(serving, 'ro');
  const rw = share(indexing, 'rw');
  if (!ro || !rw || ro.server !== rw.server || ro.path !== rw.path) {
    errors.push(`${e.env}: the read-only and read-write snapshot volumes must be one nfs share `
      + `(ro ${ro?.server}:${ro?.path}, rw ${rw?.server}:${rw?.path})`);
  }
  const dep = serving.find((o) => o.kind === 'Deployment');
  const c = dep?.spec?.template?.spec?.containers?.find((x) => x.name === 'query');
  const root = flags(c?.args).snapshot_root;
  const m = (c?.volumeMounts ?? []).find((x) => x.mountPath === root);
  const readerRoot = m ? (m.subPath ?? '') : undefined;
  if (!e.shards && indexingRoot !== undefined && readerRoot !== indexingRoot) {
    errors.push(`${e.env}: the query pods read share folder '${readerRoot}' but the build Job publishes to '${indexingRoot}'`);
  }
  // One uid reads and writes the share (deploy/k8s/README.md: the share's owner).
  const uids = new Set();
  for (const o of [...serving, ...indexing]) {
    const pod = o.kind === 'CronJob' ? o.spec?.jobTemplate?.spec?.template?.spec : o.spec?.template?.spec;
    if (pod) uids.add(pod.securityContext?.runAsUser);
  }
  if (uids.size !== 1 || uids.has(undefined)) {
    errors.push(`${e.env}: every pod must set one pod-level runAsUser (found ${[...uids].join(', ')})`);
  }
  return errors;
}

function schemaErrors(objects, models) {
  const errors = [];
  for (const o of objects) {
    const Model = models[o.apiVersion]?.[o.kind];
    if (!Model) {
      errors.push(`${objectId(o)}: no schema for ${o.apiVersion} ${o.kind}`);
      continue;
    }
    try {
      new Model(structuredClone(o)).validate();
    } catch (err) {
      errors.push(`${objectId(o)}: ${err.message}`);
    }
  }
  return errors;
}

// All checks of one environment: {errors, counts}.
function checkEnv(e, serving, indexing, models) {
  const errors = [...schemaErrors(serving, models), ...schemaErrors(indexing, models)];
  const ix = checkIndexing(indexing, e);
  if (e.shards) {
    for (let i = 0; i < e.shards; i++) errors.push(...checkServing(serving, { ...e, suffix: `-shard-${i}` }));
    errors.push(...checkSharded(serving, indexing, ix.root, e));
  } else {
    errors.push(...checkServing(serving, e));
  }
  errors.push(...ix.errors, ...checkShared(serving, indexing, ix.root, e));
  return [...new Set(errors)];
}

// A sharded collection: shard i's replicas serve the build Job's root's
// shard-<i>-of-<S> and only they are behind shard i's Services; the build
// Job and the ingest service write S shards of the collection; the router
// reaches shard i through shard i's headless Service, as rendered.
export function checkSharded(serving, indexing, indexingRoot, e) {
  const errors = [];
  const expect = (cond, msg) => cond || errors.push(msg);
  const S = e.shards;
  const name = (n) => e.prefix + n;
  const find = (objects, kind, n) => objects.find((o) => o.kind === kind && o.metadata.name === name(n));
  const deps = [];
  for (let i = 0; i < S; i++) {
    const dep = find(serving, 'Deployment', `imagesearch-query-shard-${i}`);
    deps.push(dep);
    if (!dep) continue;  // checkServing says so.
    const D = `Deployment ${dep.metadata.name}`;
    const labels = dep.spec?.template?.metadata?.labels ?? {};
    expect(labels[SHARD_LABEL] === String(i), `${D}: pods must be labelled ${SHARD_LABEL}: "${i}"`);
    const pod = dep.spec.template.spec ?? {};
    const c = (pod.containers ?? []).find((x) => x.name === 'query') ?? {};
    const root = flags(c.args).snapshot_root ?? '';
    const { mount } = mountFor(pod, c, root);
    const shareRoot = mount ? `${mount.subPath ?? ''}${root.slice(mount.mountPath.length)}` : undefined;
    const want = `${indexingRoot}/shard-${i}-of-${S}`;
    expect(indexingRoot === undefined || shareRoot === want,
      `${D}: serves share folder '${shareRoot}', not shard ${i} of the build Job's collection '${want}'`);
  }
  // Each shard's Services select its own pods and no other shard's.
  for (let i = 0; i < S; i++) {
    for (const svc of ['imagesearch-query-headless', 'imagesearch-query-http']) {
      const o = find(serving, 'Service', `${svc}-shard-${i}`);
      if (!o) continue;
      deps.forEach((d, j) => {
        if (!d || j === i) return;
        const sel = o.spec?.selector && { matchLabels: o.spec.selector };
        expect(!selects(sel, d.spec?.template?.metadata?.labels, `Service ${o.metadata.name}`, errors),
          `Service ${o.metadata.name}: also selects the pods of shard ${j}`);
      });
    }
  }
  const build = find(indexing, 'Job', 'imagesearch-snapshot-build');
  const bf = flags(build?.spec?.template?.spec?.containers?.[0]?.args);
  expect(Number(bf.shard_count) === S && bf.collection === e.collection,
    `Job ${name('imagesearch-snapshot-build')}: must publish ${S} shard roots of collection '${e.collection}' `
    + `(--shard_count=${bf.shard_count}, --collection=${bf.collection})`);
  const ingest = find(indexing, 'Deployment', 'imagesearch-ingest');
  const inf = flags(ingest?.spec?.template?.spec?.containers?.[0]?.args);
  expect(Number(inf.shard_count) === S,
    `Deployment ${name('imagesearch-ingest')}: --shard_count=${inf.shard_count}; the collection has ${S} shards`);

  const router = find(serving, 'Deployment', 'imagesearch-router');
  if (!router) return [...errors, `no Deployment ${name('imagesearch-router')}`];
  const R = `Deployment ${router.metadata.name}`;
  const pod = router.spec?.template?.spec ?? {};
  const podLabels = router.spec?.template?.metadata?.labels ?? {};
  expect(selects(router.spec.selector, podLabels, R, errors), `${R}: selector does not match its pod labels`);
  checkPod(R, pod, errors, e);
  const c = (pod.containers ?? []).find((x) => x.name === 'router');
  if (!c) return [...errors, `${R}: no container 'router'`];
  expect(JSON.stringify(c.command) === '["imagesearch-router"]', `${R}: must run imagesearch-router`);
  const port = (n) => (c.ports ?? []).find((p) => p.name === n)?.containerPort;
  const f = flags(c.args);
  expect(Number(f.port) === port('grpc'), `${R}: --port=${f.port} is not the grpc container port`);
  expect(Number(f.http_port) === port('http'), `${R}: --http_port=${f.http_port} is not the http container port`);
  const targets = (f.shards ?? '').split(';');
  expect(targets.length === S, `${R}: --shards lists ${targets.length} shards; the collection has ${S}`);
  const env = Object.fromEntries((c.env ?? []).map((x) => [x.name, x.value]));
  targets.forEach((t, i) => {
    const m = /^dns:\/\/\/\$\(([A-Z0-9_]+)\):(\d+)$/.exec(t);
    const svc = find(serving, 'Service', `imagesearch-query-headless-shard-${i}`);
    const grpcPort = deps[i]?.spec?.template?.spec?.containers?.[0]?.ports?.find((p) => p.name === 'grpc')?.containerPort;
    if (!m) {
      errors.push(`${R}: --shards entry ${i} '${t}' must be dns:///$(SHARD_${i}):PORT`);
      return;
    }
    expect(svc && env[m[1]] === svc.metadata.name,
      `${R}: shard ${i} is reached through $(${m[1]}) = '${env[m[1]]}', not shard ${i}'s headless Service `
      + `'${svc?.metadata?.name}'`);
    expect(Number(m[2]) === grpcPort, `${R}: shard ${i} on port ${m[2]}, its replicas' grpc port is ${grpcPort}`);
  });
  for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    expect(c[probe]?.grpc?.port === port('grpc'), `${R}: ${probe} must be a native grpc probe on the grpc port`);
  }
  // With --model the router embeds, from a read-only mount of the share, and
  // the shard replicas keep no model in memory; without it they must.
  if (f.model) {
    const bad = modelInstancesProblem(c);
    expect(!bad, `${R}: ${bad}`);
    const { mount, volume } = mountFor(pod, c, f.model);
    expect(mount?.readOnly === true && volume?.persistentVolumeClaim?.claimName === name('imagesearch-snapshots'),
      `${R}: --model=${f.model} must be on a read-only mount of claim ${name('imagesearch-snapshots')}`);
  }
  deps.forEach((d, i) => {
    const load = flags(d?.spec?.template?.spec?.containers?.[0]?.args).load_model;
    if (!d) return;
    expect(f.model ? load === 'false' : load !== 'false',
      f.model ? `Deployment ${d.metadata.name}: needs --load_model=false (the router embeds with --model)`
        : `Deployment ${d.metadata.name}: --load_model=false, but the router has no --model to embed with`);
  });
  const sleep = c.lifecycle?.preStop?.sleep?.seconds ?? 0;
  const tgp = pod.terminationGracePeriodSeconds ?? 30;
  const routerAge = Number(f.max_connection_age_ms);
  expect(routerAge >= CONNECTION_AGE_MS[0] && routerAge <= CONNECTION_AGE_MS[1],
    `${R}: --max_connection_age_ms=${f.max_connection_age_ms} must be set within ${CONNECTION_AGE_MS.join('..')} `
    + 'so clients spread onto routers the HPA adds');
  const drainS = Number(f.shutdown_grace_ms ?? 5000) / 1000;
  expect(sleep >= 1 && tgp >= sleep + drainS + 2, `${R}: terminationGracePeriodSeconds ${tgp} < preStop ${sleep} s + ${drainS} s drain + 2 s`);
  const svcSelects = (n) => {
    const o = find(serving, 'Service', n);
    return o && selects(o.spec?.selector && { matchLabels: o.spec.selector }, podLabels, `Service ${n}`, errors);
  };
  expect(svcSelects('imagesearch-router-headless') && find(serving, 'Service', 'imagesearch-router-headless').spec.clusterIP === 'None',
    `Service ${name('imagesearch-router-headless')}: must be headless and select the router's pods`);
  expect(svcSelects('imagesearch-router-http'), `Service ${name('imagesearch-router-http')}: must select the router's pods`);
  expect(serving.some((o) => o.kind === 'PodDisruptionBudget' && selects(o.spec?.selector, podLabels, 'pdb', errors)),
    `no PodDisruptionBudget selects the pods of ${R}`);
  const hpa = serving.find((o) => o.kind === 'HorizontalPodAutoscaler' && o.spec?.scaleTargetRef?.name === router.metadata.name);
  expect(hpa && (hpa.spec.minReplicas ?? 1) >= 2, `${R}: needs a HorizontalPodAutoscaler with minReplicas >= 2`);
  expect(router.spec.replicas === undefined, `${R}: sets spec.replicas, which every apply would reset under the HPA`);
  return errors;
}

// Environments share a cluster: each needs its own names for cluster-scoped
// objects (one PersistentVolume binds one claim, so a second environment's
// claim would stay Pending) and its own NFS share (or its Jobs would read
// the other's input and write into its scratch and roots). `rendered` as in
// main(); base is a template, not an environment. Returns a list of errors.
export function checkAcrossEnvs(rendered) {
  const errors = [];
  const names = new Map();
  const shares = new Map();
  for (const { e, serving, indexing } of rendered) {
    if (e.env === 'base') continue;
    const own = new Set();
    for (const o of [...serving, ...indexing]) {
      if (o.kind !== 'PersistentVolume') continue;
      const other = names.get(o.metadata.name);
      if (other !== undefined && other !== e.env) {
        errors.push(`PersistentVolume ${o.metadata.name} is rendered by both ${other} and ${e.env}: one volume `
          + 'binds one claim (a name prefix keeps environments apart)');
      }
      names.set(o.metadata.name, e.env);
      if (o.spec?.nfs) own.add(`${o.spec.nfs.server}:${o.spec.nfs.path}`);
    }
    for (const share of own) {
      const other = shares.get(share);
      if (other !== undefined) {
        errors.push(`${other} and ${e.env} both use the share ${share}: their indexing input, scratch and `
          + 'snapshot roots would mix');
      }
      shares.set(share, e.env);
    }
  }
  return errors;
}

// --- rendering: kustomize v5 ------------------------------------------------

// A kustomize of major version >= 5 (the `labels` field needs v4.1+);
// kubectl <= 1.23 (e.g. Debian's 1.20, with kustomize v2) does not count.
// Returns {usable, seen}: the first usable one, and the names of all found.
function findKustomize() {
  const tryRun = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 30000 });
    } catch {
      return undefined;
    }
  };
  const major = (v) => Number(/v?(\d+)\.\d+/.exec(v ?? '')?.[1] ?? 0);
  const found = [];
  const v = tryRun('kustomize', ['version']);
  if (v !== undefined) found.push({ cmd: 'kustomize', args: ['build'], version: v.trim(), name: `kustomize ${v.trim()}` });
  const kv = tryRun('kubectl', ['version', '--client', '-o', 'json']);
  if (kv !== undefined) {
    let version;
    try {
      version = JSON.parse(kv).kustomizeVersion;
    } catch { /* not JSON: an old kubectl */ }
    found.push({ cmd: 'kubectl', args: ['kustomize'], version, name: `kubectl kustomize (kustomize ${version ?? 'unknown'})` });
  }
  return { usable: found.find((k) => major(k.version) >= 5), seen: found.map((k) => k.name) };
}

// The objects kustomize `k` renders from the kustomization in `dir`. Throws
// with kustomize's own message when it refuses the kustomization.
function render(k, dir, yaml) {
  let out;
  try {
    out = execFileSync(k.cmd, [...k.args, dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000 });
  } catch (err) {
    throw new Error(`${k.cmd} ${k.args.join(' ')} ${dir}: ${(err.stderr || err.message).trim()}`);
  }
  const objects = [];
  for (const d of yaml.parseAllDocuments(out)) {
    if (d.errors.length) throw new Error(`${dir}: ${k.cmd} printed YAML that does not parse: ${d.errors[0].message}`);
    const o = d.toJS();
    if (o !== null && o !== undefined) objects.push(o);
  }
  return objects;
}

// --- self-checks: each broken copy must be rejected -----------------------

function queryContainer(serving) {
  return serving.find((o) => o.kind === 'Deployment').spec.template.spec.containers[0];
}

function negativeChecks(rendered, models, yaml, k, k8sDir) {
  const pick = (env) => rendered.find((r) => r.e.env === env);
  const cases = [
    ['readinessProbe.grpc.port as a string', 'prod', (s) => {
      s.find((o) => o.kind === 'Deployment').spec.template.spec.containers[0].readinessProbe.grpc.port = '50051';
    }, /readinessProbe\/grpc\/port must be integer/],
    ['headless Service with a cluster IP', 'prod', (s) => {
      delete s.find((o) => o.metadata.name.endsWith('-headless')).spec.clusterIP;
    }, /clusterIP must be None/],
    ['HTTP Service selecting other pods', 'prod', (s) => {
      s.find((o) => o.metadata.name.endsWith('-http')).spec.selector = { 'app.kubernetes.io/name': 'other' };
    }, /does not select the Deployment's pods/],
    ['HPA naming the unprefixed Deployment', 'dev', (s) => {
      s.find((o) => o.kind === 'HorizontalPodAutoscaler').spec.scaleTargetRef.name = 'imagesearch-query';
    }, /no HorizontalPodAutoscaler targets/],
    ['PDB selecting other pods', 'dev', (s) => {
      s.find((o) => o.kind === 'PodDisruptionBudget').spec.selector.matchLabels = { app: 'other' };
    }, /no PodDisruptionBudget selects/],
    ['liveness probe on the HTTP port', 'prod', (s) => {
      s.find((o) => o.kind === 'Deployment').spec.template.spec.containers[0].livenessProbe.grpc.port = 8080;
    }, /livenessProbe.grpc.port 8080/],
    ['no startup probe', 'prod', (s) => {
      delete s.find((o) => o.kind === 'Deployment').spec.template.spec.containers[0].startupProbe;
    }, /startupProbe must be a native grpc probe/],
    ['grace period shorter than the drain', 'prod', (s) => {
      s.find((o) => o.kind === 'Deployment').spec.template.spec.terminationGracePeriodSeconds = 20;
    }, /terminationGracePeriodSeconds 20/],
    ['prod with one replica', 'prod', (s) => {
      s.find((o) => o.kind === 'HorizontalPodAutoscaler').spec.minReplicas = 1;
    }, /prod needs at least 3 replicas/],
    ['snapshot mounted writable', 'prod', (s) => {
      s.find((o) => o.kind === 'Deployment').spec.template.spec.containers[0].volumeMounts[0].readOnly = false;
    }, /is not a read-only mount/],
    ['two ingest replicas', 'prod', undefined, /replicas must be 1/, (ix) => {
      ix.find((o) => o.kind === 'Deployment' && o.metadata.name.endsWith('ingest')).spec.replicas = 2;
    }],
    ['Job not Indexed', 'prod', undefined, /completionMode must be Indexed/, (ix) => {
      delete ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.completionMode;
    }],
    ['shard index hard-coded', 'dev', undefined, /--shard=\$\(JOB_COMPLETION_INDEX\)\/N/, (ix) => {
      const c = ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.template.spec.containers[0];
      c.args = c.args.map((a) => (a.startsWith('--shard=') ? '--shard=0/3' : a));
    }],
    ['shard count disagreeing with completions', 'prod', undefined, /completions is 4/, (ix) => {
      ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.completions = 4;
    }],
    ['build Job reading another shard folder', 'prod', undefined, /--shards=\/tmp\/shards/, (ix) => {
      const c = ix.find((o) => o.metadata.name.endsWith('snapshot-build')).spec.template.spec.containers[0];
      c.args = c.args.map((a) => (a.startsWith('--shards=') ? '--shards=/tmp/shards' : a));
    }],
    ['writers on another share than readers', 'prod', undefined, /must be one nfs share/, (ix) => {
      ix.find((o) => o.kind === 'PersistentVolume').spec.nfs.path = '/elsewhere';
    }],
    ['writers running as another uid', 'dev', undefined, /one pod-level runAsUser/, (ix) => {
      ix.find((o) => o.metadata.name.endsWith('snapshot-build')).spec.template.spec.securityContext.runAsUser = 1000;
    }],
    ['dev on the mutable :dev tag', 'dev', (s) => {
      queryContainer(s).image = 'ghcr.io/imagesearch/imagesearch-query:dev';
    }, /imagesearch-query:dev: the committed overlays carry the placeholder digest/],
    ['a Job container without imagePullPolicy', 'prod', undefined, /imagePullPolicy must be IfNotPresent/, (ix) => {
      delete ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.template.spec.containers[0].imagePullPolicy;
    }],
    ['a release with the placeholder digest', 'prod', undefined, /is not deployed by digest/, undefined,
      { images: 'release' }],
    ['a release by commit tag', 'prod', (s) => {
      queryContainer(s).image = `ghcr.io/imagesearch/imagesearch-query:${'a'.repeat(40)}`;
    }, /imagesearch-query:a{40} is not deployed by digest/, undefined, { images: 'release' }],
    ['replicas verifying checksums', 'prod', (s) => {
      const c = queryContainer(s);
      c.args = c.args.map((a) => (a === '--verify=sizes' ? '--verify=checksums' : a));
    }, /--verify=checksums; replicas on the shared volume need --verify=sizes/],
    ['no maximum connection age', 'prod', (s) => {
      const c = queryContainer(s);
      c.args = c.args.filter((a) => !a.startsWith('--max_connection_age_ms='));
    }, /--max_connection_age_ms=undefined must be set/],
    ['Indexed Job without a per-index backoff limit', 'prod', undefined, /needs backoffLimitPerIndex/, (ix) => {
      delete ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.backoffLimitPerIndex;
    }],
    ['Indexed Job without maxFailedIndexes', 'dev', undefined, /needs maxFailedIndexes/, (ix) => {
      delete ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.maxFailedIndexes;
    }],
    ['Indexed Job without a deadline', 'prod', undefined, /index-shards: needs activeDeadlineSeconds/, (ix) => {
      delete ix.find((o) => o.metadata.name.endsWith('index-shards')).spec.activeDeadlineSeconds;
    }],
    ['build Job without a pod failure policy', 'prod', undefined, /snapshot-build: needs a podFailurePolicy rule/, (ix) => {
      delete ix.find((o) => o.metadata.name.endsWith('snapshot-build')).spec.podFailurePolicy;
    }],
    ['the router reaching shard 1 through shard 0', 'sharded', (s) => {
      const c = s.find((o) => o.metadata.name === 'photos-imagesearch-router').spec.template.spec.containers[0];
      c.env.find((x) => x.name === 'SHARD_1').value = 'photos-imagesearch-query-headless-shard-0';
    }, /shard 1 is reached through \$\(SHARD_1\) = 'photos-imagesearch-query-headless-shard-0'/],
    ['a router without a maximum connection age', 'sharded', (s) => {
      const c = s.find((o) => o.metadata.name === 'photos-imagesearch-router').spec.template.spec.containers[0];
      c.args = c.args.filter((a) => !a.startsWith('--max_connection_age_ms='));
    }, /imagesearch-router: --max_connection_age_ms=undefined must be set/],
    ['the router listing one shard of two', 'sharded', (s) => {
      const c = s.find((o) => o.metadata.name === 'photos-imagesearch-router').spec.template.spec.containers[0];
      c.args = c.args.map((a) => (a.startsWith('--shards=') ? '--shards=dns:///$(SHARD_0):50051' : a));
    }, /--shards lists 1 shards; the collection has 2/],
    ['shard 1 serving shard 0', 'sharded', (s) => {
      const c = s.find((o) => o.metadata.name === 'photos-imagesearch-query-shard-1').spec.template.spec.containers[0];
      c.args = c.args.map((a) => (a.startsWith('--snapshot_root=') ? '--snapshot_root=/snapshots/photos/shard-0-of-2' : a));
    }, /imagesearch-query-shard-1: serves share folder 'snapshots\/photos\/shard-0-of-2'/],
    ['a shard Service selecting every shard', 'sharded', (s) => {
      delete s.find((o) => o.metadata.name === 'photos-imagesearch-query-headless-shard-0').spec.selector[SHARD_LABEL];
    }, /imagesearch-query-headless-shard-0: also selects the pods of shard 1/],
    ['shard replicas loading the model the router embeds with', 'sharded', (s) => {
      const c = s.find((o) => o.metadata.name === 'photos-imagesearch-query-shard-0').spec.template.spec.containers[0];
      c.args = c.args.filter((a) => a !== '--load_model=false');
    }, /imagesearch-query-shard-0: needs --load_model=false/],
    ['replicas sizing the model by the node', 'prod', (s) => {
      const c = queryContainer(s);
      c.args = c.args.filter((a) => !a.startsWith('--model_instances='));
    }, /imagesearch-query: --model_instances=\(default: one per CPU of the node\) must be/],
    ['the router sizing the model by the node', 'sharded', (s) => {
      const c = s.find((o) => o.metadata.name === 'photos-imagesearch-router').spec.template.spec.containers[0];
      c.env.find((x) => x.name === 'CPU_REQUEST').valueFrom.resourceFieldRef.resource = 'limits.cpu';
    }, /photos-imagesearch-router: --model_instances=\$\(CPU_REQUEST\) must be/],
    ['the build Job publishing one root', 'sharded', undefined, /must publish 2 shard roots/, (ix) => {
      const c = ix.find((o) => o.metadata.name === 'photos-imagesearch-snapshot-build').spec.template.spec.containers[0];
      c.args = c.args.filter((a) => !a.startsWith('--shard_count='));
    }],
  ];
  const failures = [];
  for (const [what, env, breakServing, want, breakIndexing, override] of cases) {
    const r = pick(env);
    const serving = structuredClone(r.serving);
    const indexing = structuredClone(r.indexing);
    if (breakServing) breakServing(serving);
    if (breakIndexing) breakIndexing(indexing);
    const errors = checkEnv({ ...r.e, ...override }, serving, indexing, models);
    if (!errors.some((x) => want.test(x))) {
      failures.push(`broken copy '${what}' was not rejected (errors: ${errors.join('; ') || 'none'})`);
    }
  }
  // Broken overlays on disk over a copy of base/ and overlays/ (kustomize
  // refuses absolute paths to a base), rendered by kustomize like the
  // committed ones: what kustomize renders is what gets checked, and a
  // kustomization that kustomize refuses is a failure.
  // [what, env, 'serving' | 'indexing', kustomization fields, {file: text}, error]
  const overlayCases = [
    ['an overlay moving the readiness probe to the HTTP port', 'prod', 'serving',
      'patches: [{path: probe.yaml}]\n',
      { 'probe.yaml': 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: imagesearch-query}\n'
        + 'spec: {template: {spec: {containers: [{name: query, readinessProbe: {grpc: {port: 8080}}}]}}}\n' },
      /readinessProbe.grpc.port 8080 is not the grpc port/],
    ['an overlay running the indexer by tag', 'dev', 'indexing',
      'images: [{name: ghcr.io/imagesearch/imagesearch-indexer, newTag: latest}]\n', {},
      /imagesearch-indexer:latest: the committed overlays carry the placeholder digest/],
    ['an overlay patching a Deployment that does not exist', 'prod', 'serving',
      'patches: [{path: nope.yaml}]\n',
      { 'nope.yaml': 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nope}\nspec: {}\n' },
      /render failed: .*Deployment\.v1\.apps\/nope/],
  ];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'k8s-validate-'));
  try {
    for (const dir of ['base', 'overlays']) {
      fs.cpSync(path.join(k8sDir, dir), path.join(tmp, dir), { recursive: true });
    }
    overlayCases.forEach(([what, env, part, fields, files, want], i) => {
      const r = pick(env);
      const dir = path.join(tmp, 'broken', String(i));
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'kustomization.yaml'), 'apiVersion: kustomize.config.k8s.io/v1beta1\n'
        + `kind: Kustomization\nresources: [../../${r.e[part]}]\n${fields}`);
      for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
      let errors;
      try {
        const objects = render(k, dir, yaml);
        errors = part === 'serving' ? checkEnv(r.e, objects, r.indexing, models)
          : checkEnv(r.e, r.serving, objects, models);
      } catch (err) {
        errors = [`render failed: ${err.message}`];
      }
      if (!errors.some((x) => want.test(x))) {
        failures.push(`broken overlay '${what}' was not rejected (errors: ${errors.join('; ') || 'none'})`);
      }
    });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  // Across environments, on copies of what was rendered.
  const volumes = (r) => [...r.serving, ...r.indexing].filter((o) => o.kind === 'PersistentVolume');
  const acrossCases = [
    ['the sharded collection on prod\'s share', (all) => {
      const prodShare = volumes(all.find((r) => r.e.env === 'prod'))[0].spec.nfs;
      for (const pv of volumes(all.find((r) => r.e.env === 'sharded'))) pv.spec.nfs = { ...prodShare };
    }, /prod and sharded both use the share nfs\.example\.internal:\/imagesearch:/],
    ['the sharded collection\'s volumes named as prod\'s', (all) => {
      for (const pv of volumes(all.find((r) => r.e.env === 'sharded'))) {
        pv.metadata.name = pv.metadata.name.replace(/^photos-/, '');
      }
    }, /PersistentVolume imagesearch-snapshots-ro is rendered by both prod and sharded/],
  ];
  for (const [what, breakAll, want] of acrossCases) {
    const all = structuredClone(rendered);
    breakAll(all);
    const errors = checkAcrossEnvs(all);
    if (!errors.some((x) => want.test(x))) {
      failures.push(`broken copy '${what}' was not rejected (errors: ${errors.join('; ') || 'none'})`);
    }
  }
  return { count: cases.length + overlayCases.length + acrossCases.length, failures };
}

// A release as release.sh rendered it: the same checks as the committed
// overlay of that environment, with real digests required.
function checkRelease(env, dir, yaml, models) {
  const base = ENVS.find((x) => x.env === env && x.env !== 'base');
  if (!base) {
    console.error(`validate.mjs --release: unknown environment '${env}' (dev or prod)`);
    process.exit(2);
  }
  const read = (f) => yaml.parseAllDocuments(fs.readFileSync(path.join(dir, f), 'utf8'))
    .map((d) => d.toJS()).filter(Boolean);
  const serving = read('service.yaml');
  const indexing = read('indexing.yaml');
  const errors = checkEnv({ ...base, images: 'release' }, serving, indexing, models);
  if (errors.length) {
    console.error(`release ${env} in ${dir} REFUSED:\n  ${errors.join('\n  ')}`);
    process.exit(1);
  }
  console.log(`release ${env}: ${serving.length} service + ${indexing.length} indexing objects by digest: `
    + 'schema and invariants ok');
}

async function main(argv) {
  let depsFile;
  let release;
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--deps') depsFile = argv[++i];
    else if (argv[i] === '--release') release = [argv[++i], argv[++i]];
    else rest.push(argv[i]);
  }
  const k8sDir = path.resolve(rest[0] ?? HERE);
  if (!depsFile) {
    console.error('usage: node validate.mjs --deps BUILD_DIR/npm-k8s/deps.mjs [K8S_DIR | --release ENV DIR]');
    process.exit(2);
  }
  const { yaml, models } = await import(pathToFileURL(path.resolve(depsFile)).href);
  if (release) {
    checkRelease(release[0], release[1], yaml, models);
    return;
  }
  const mode = process.env.K8S_KUSTOMIZE ?? 'auto';
  if (mode !== 'auto' && mode !== 'require') {
    console.error(`validate.mjs: K8S_KUSTOMIZE must be auto or require, got '${mode}'`);
    process.exit(2);
  }
  const found = findKustomize();
  const k = found.usable;
  if (!k) {
    const why = found.seen.length ? `only ${found.seen.join(', ')} is on PATH` : 'neither kubectl nor kustomize is on PATH';
    const what = `deploy/k8s is rendered with kubectl kustomize (kustomize >= v5), and ${why}`;
    if (mode === 'require') {
      console.error(`k8s validation FAILED: K8S_KUSTOMIZE=require: ${what}`);
      process.exit(1);
    }
    console.log(`SKIP: ${what} (ci/install_deps.sh installs kubectl)`);
    process.exit(SKIP);
  }
  console.log(`rendering with ${k.name}`);

  const failures = [];
  const rendered = [];
  let objects = 0;
  for (const e of ENVS) {
    let serving;
    let indexing;
    try {
      serving = render(k, path.join(k8sDir, e.serving), yaml);
      indexing = render(k, path.join(k8sDir, e.indexing), yaml);
    } catch (err) {
      failures.push(`${e.env}: render failed: ${err.message}`);
      continue;
    }
    rendered.push({ e, serving, indexing });
    const errors = checkEnv(e, serving, indexing, models);
    failures.push(...errors.map((x) => `${e.env}: ${x}`));
    objects += serving.length + indexing.length;
    console.log(`${e.env.padEnd(5)} ${String(serving.length).padStart(2)} service + ${String(indexing.length).padStart(2)} indexing objects: `
      + `schema and invariants ${errors.length ? `FAILED (${errors.length})` : 'ok'}`);
  }

  if (rendered.length === ENVS.length) {
    const across = checkAcrossEnvs(rendered);
    failures.push(...across);
    console.log(`across environments: cluster-scoped names and shares ${across.length ? `FAILED (${across.length})` : 'apart'}`);
    const neg = negativeChecks(rendered, models, yaml, k, k8sDir);
    failures.push(...neg.failures);
    console.log(`self-check: ${neg.count - neg.failures.length} of ${neg.count} deliberately broken copies rejected`);
  }

  if (failures.length) {
    console.error(`\nk8s validation FAILED:\n  ${failures.join('\n  ')}`);
    console.log(`k8s: ${objects} objects checked, ${failures.length} failed`);
    process.exit(1);
  }
  console.log(`k8s: ${objects} objects validated, 0 failed`);
}

main(process.argv.slice(2)).catch((err) => {
  console.error(`validate.mjs: ${err.stack ?? err}`);
  process.exit(1);
});
