// A Kustomize subset renderer: exactly the part of Kustomize that the
// manifests under deploy/k8s use, and nothing else.
//
// It exists because no kustomize (or kubectl) can be installed reproducibly
// where CI runs: Debian 12's kubernetes-client is kubectl 1.20, whose built-in
// kustomize (v2.0.3) predates `labels` and `patches`, and the npm registry
// holds only third-party repackagings of the binary. `kubectl kustomize DIR`
// renders the same objects; validate.mjs compares the two whenever a real
// kustomize or kubectl is on PATH.
//
// Supported kustomization.yaml fields (anything else is an error, never ignored):
//   resources   files (multi-document YAML) and directories with a kustomization.yaml
//   namespace   set on namespaced kinds
//   namePrefix  on every object, with the name references below updated
//   labels      [{pairs, includeTemplates}] (includeSelectors: false only)
//   images      [{name, newName, newTag, digest}] in every containers/initContainers list
//   patches     [{path}] strategic-merge patches naming their target by
//               apiVersion/kind/metadata.name; the list merge keys of MERGE_KEYS
// Name references updated by namePrefix: serviceAccountName, persistentVolumeClaim
// claimName, PersistentVolumeClaim volumeName, HorizontalPodAutoscaler
// scaleTargetRef. Only the kinds in KINDS may appear.
//
// Usage: node render.mjs [--deps DIR/deps.mjs] KUSTOMIZATION_DIR   (YAML on stdout)
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const KUSTOMIZATION_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'namePrefix',
  'labels', 'images', 'patches']);

// kind -> {namespaced, pod: path to the pod spec, templates: pod/job template metadata paths}
const KINDS = {
  ServiceAccount: { namespaced: true },
  Service: { namespaced: true },
  PersistentVolume: { namespaced: false },
  PersistentVolumeClaim: { namespaced: true },
  Deployment: { namespaced: true, pod: ['spec', 'template', 'spec'],
    templates: [['spec', 'template', 'metadata']] },
  Job: { namespaced: true, pod: ['spec', 'template', 'spec'],
    templates: [['spec', 'template', 'metadata']] },
  CronJob: { namespaced: true, pod: ['spec', 'jobTemplate', 'spec', 'template', 'spec'],
    templates: [['spec', 'jobTemplate', 'metadata'],
      ['spec', 'jobTemplate', 'spec', 'template', 'metadata']] },
  PodDisruptionBudget: { namespaced: true },
  HorizontalPodAutoscaler: { namespaced: true },
};

// Strategic-merge keys of the object lists a patch may touch, by the list's
// field name (and, for `ports`, whether it sits in a container). Other object
// lists are refused rather than guessed at; scalar lists are replaced.
const MERGE_KEYS = {
  containers: ['name'],
  initContainers: ['name'],
  env: ['name'],
  volumes: ['name'],
  volumeMounts: ['mountPath'],
  containerPorts: ['containerPort'],
  servicePorts: ['port'],
  topologySpreadConstraints: ['topologyKey', 'whenUnsatisfiable'],
  imagePullSecrets: ['name'],
};
const MERGED_SCALAR_LISTS = new Set(['finalizers']);

// kustomize's "legacy" output order, for readable output only.
const KIND_ORDER = ['Namespace', 'ResourceQuota', 'StorageClass', 'CustomResourceDefinition',
  'ServiceAccount', 'PodSecurityPolicy', 'Role', 'ClusterRole', 'RoleBinding',
  'ClusterRoleBinding', 'ConfigMap', 'Secret', 'Endpoints', 'Service', 'LimitRange',
  'PriorityClass', 'PersistentVolume', 'PersistentVolumeClaim', 'Deployment', 'StatefulSet',
  'CronJob', 'PodDisruptionBudget'];

class RenderError extends Error {}

function fail(where, msg) {
  throw new RenderError(`${where}: ${msg}`);
}

function isMap(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function get(obj, p) {
  return p.reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function ensure(obj, p) {
  return p.reduce((o, k) => {
    if (!isMap(o[k])) o[k] = {};
    return o[k];
  }, obj);
}

export function objectId(o) {
  const ns = o.metadata?.namespace ? `${o.metadata.namespace}/` : '';
  return `${o.kind} ${ns}${o.metadata?.name}`;
}

function parseDocs(yaml, file) {
  const docs = yaml.parseAllDocuments(fs.readFileSync(file, 'utf8'));
  const out = [];
  for (const d of docs) {
    if (d.errors.length) fail(file, d.errors[0].message);
    const v = d.toJS();
    if (v === null || v === undefined) continue;
    if (!isMap(v)) fail(file, 'a document is not a map');
    out.push(v);
  }
  return out;
}

// Strategic merge of `patch` into `target` (both plain JSON); `where` names the
// field for errors, `inContainer` picks the merge key of `ports`.
function strategicMerge(target, patch, where, inContainer = false) {
  for (const [key, pv] of Object.entries(patch)) {
    if (key.startsWith('$')) fail(where, `patch directive ${key} is not supported`);
    const at = `${where}.${key}`;
    if (pv === null) {
      delete target[key];
    } else if (isMap(pv)) {
      if (!isMap(target[key])) target[key] = {};
      strategicMerge(target[key], pv, at, inContainer || key === 'containers'
        || key === 'initContainers');
    } else if (Array.isArray(pv)) {
      if (!pv.some(isMap)) {
        if (MERGED_SCALAR_LISTS.has(key)) fail(at, 'merging scalar lists is not supported');
        target[key] = structuredClone(pv);
        continue;
      }
      const keyName = key === 'ports' ? (inContainer ? 'containerPorts' : 'servicePorts') : key;
      const mergeKey = MERGE_KEYS[keyName];
      if (!mergeKey) fail(at, 'no strategic-merge key known for this list (subset renderer)');
      if (!Array.isArray(target[key])) target[key] = [];
      for (const item of pv) {
        if (!isMap(item)) fail(at, 'mixed list');
        if (mergeKey.some((k) => item[k] === undefined)) {
          fail(at, `list item lacks its merge key ${mergeKey.join('+')}`);
        }
        const existing = target[key].find((t) => mergeKey.every((k) => t[k] === item[k]));
        if (existing) {
          strategicMerge(existing, item, `${at}[${mergeKey.map((k) => item[k]).join(',')}]`,
            inContainer || key === 'containers' || key === 'initContainers');
        } else {
          target[key].push(structuredClone(item));
        }
      }
    } else {
      target[key] = pv;
    }
  }
}

function applyPatch(objects, patch, file) {
  if (!patch.apiVersion || !patch.kind || !patch.metadata?.name) {
    fail(file, 'a strategic-merge patch must name apiVersion, kind and metadata.name');
  }
  const matches = objects.filter((o) => o.apiVersion === patch.apiVersion
    && o.kind === patch.kind && o.metadata.name === patch.metadata.name
    && (!patch.metadata.namespace || patch.metadata.namespace === o.metadata.namespace));
  if (matches.length !== 1) {
    fail(file, `patch target ${patch.kind} ${patch.metadata.name} matches ${matches.length} objects`);
  }
  const body = structuredClone(patch);
  delete body.apiVersion;
  delete body.kind;
  delete body.metadata.name;
  delete body.metadata.namespace;
  if (Object.keys(body.metadata).length === 0) delete body.metadata;
  strategicMerge(matches[0], body, `${file}:${patch.kind}/${patch.metadata.name}`);
}

function splitImage(image) {
  let rest = image;
  let digest = '';
  let tag = '';
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  return { name: rest, tag, digest };
}

function transformImages(node, entries) {
  if (Array.isArray(node)) {
    node.forEach((n) => transformImages(n, entries));
    return;
  }
  if (!isMap(node)) return;
  for (const [key, value] of Object.entries(node)) {
    if ((key === 'containers' || key === 'initContainers') && Array.isArray(value)) {
      for (const c of value) {
        if (!isMap(c) || typeof c.image !== 'string') continue;
        const img = splitImage(c.image);
        const e = entries.find((x) => x.name === img.name);
        if (!e) continue;
        const name = e.newName ?? img.name;
        if (e.digest) c.image = `${name}@${e.digest}`;
        else if (e.newTag !== undefined) c.image = `${name}:${e.newTag}`;
        else c.image = name + (img.tag ? `:${img.tag}` : '') + (img.digest ? `@${img.digest}` : '');
      }
    }
    transformImages(value, entries);
  }
}

// Renames references to objects of `kind` whose names changed (old -> new).
function updateReferences(objects, kind, renames) {
  const rename = (holder, field) => {
    if (holder && typeof holder[field] === 'string' && renames.has(holder[field])) {
      holder[field] = renames.get(holder[field]);
    }
  };
  for (const o of objects) {
    const pod = KINDS[o.kind].pod ? get(o, KINDS[o.kind].pod) : undefined;
    if (kind === 'ServiceAccount' && pod) {
      rename(pod, 'serviceAccountName');
      rename(pod, 'serviceAccount');
    }
    if (kind === 'PersistentVolumeClaim' && pod) {
      for (const v of pod.volumes ?? []) rename(v.persistentVolumeClaim, 'claimName');
    }
    if (kind === 'PersistentVolume' && o.kind === 'PersistentVolumeClaim') rename(o.spec, 'volumeName');
    if (o.kind === 'HorizontalPodAutoscaler' && o.spec?.scaleTargetRef?.kind === kind) {
      rename(o.spec.scaleTargetRef, 'name');
    }
  }
}

function readKustomization(yaml, dir) {
  const file = path.join(dir, 'kustomization.yaml');
  if (!fs.existsSync(file)) fail(dir, 'no kustomization.yaml');
  const docs = parseDocs(yaml, file);
  if (docs.length !== 1) fail(file, 'expected one document');
  const k = docs[0];
  for (const key of Object.keys(k)) {
    if (!KUSTOMIZATION_FIELDS.has(key)) fail(file, `field '${key}' is not supported by this subset renderer`);
  }
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') {
    fail(file, 'expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization');
  }
  return { file, k };
}

function build(yaml, dir) {
  const { file, k } = readKustomization(yaml, dir);
  const objects = [];
  for (const r of k.resources ?? []) {
    if (/^[a-z]+:\/\//i.test(r) || r.includes('?ref=')) fail(file, `remote resource ${r} is not supported`);
    const p = path.resolve(dir, r);
    if (!fs.existsSync(p)) fail(file, `resource ${r} does not exist`);
    if (fs.statSync(p).isDirectory()) objects.push(...build(yaml, p));
    else objects.push(...parseDocs(yaml, p));
  }
  for (const o of objects) {
    if (!KINDS[o.kind]) fail(file, `kind ${o.kind} is not supported by this subset renderer`);
    if (typeof o.metadata?.name !== 'string') fail(file, `a ${o.kind} has no metadata.name`);
  }

  for (const p of k.patches ?? []) {
    if (!isMap(p) || typeof p.path !== 'string' || Object.keys(p).length !== 1) {
      fail(file, 'only `patches: [{path: FILE}]` (strategic merge, no target/options) is supported');
    }
    const pf = path.resolve(dir, p.path);
    for (const doc of parseDocs(yaml, pf)) applyPatch(objects, doc, pf);
  }

  if (k.namespace !== undefined) {
    for (const o of objects) if (KINDS[o.kind].namespaced) o.metadata.namespace = k.namespace;
  }

  for (const l of k.labels ?? []) {
    const extra = Object.keys(l).filter((x) => !['pairs', 'includeTemplates', 'includeSelectors'].includes(x));
    if (extra.length || l.includeSelectors) {
      fail(file, 'labels: only {pairs, includeTemplates} with includeSelectors false is supported');
    }
    for (const o of objects) {
      Object.assign(ensure(o, ['metadata', 'labels']), l.pairs);
      if (l.includeTemplates) {
        for (const t of KINDS[o.kind].templates ?? []) Object.assign(ensure(o, [...t, 'labels']), l.pairs);
      }
    }
  }

  if (k.namePrefix) {
    const renames = new Map();
    for (const o of objects) {
      if (!renames.has(o.kind)) renames.set(o.kind, new Map());
      const to = k.namePrefix + o.metadata.name;
      renames.get(o.kind).set(o.metadata.name, to);
      o.metadata.name = to;
    }
    for (const [kind, map] of renames) updateReferences(objects, kind, map);
  }

  if (k.images) {
    for (const e of k.images) {
      const extra = Object.keys(e).filter((x) => !['name', 'newName', 'newTag', 'digest'].includes(x));
      if (extra.length || typeof e.name !== 'string') fail(file, `images: unsupported entry ${JSON.stringify(e)}`);
    }
    for (const o of objects) transformImages(o, k.images);
  }

  const seen = new Set();
  for (const o of objects) {
    const id = `${o.apiVersion} ${objectId(o)}`;
    if (seen.has(id)) fail(file, `duplicate object ${id}`);
    seen.add(id);
  }
  return objects;
}

function kindRank(kind) {
  const i = KIND_ORDER.indexOf(kind);
  return i >= 0 ? i : KIND_ORDER.length;
}

// Renders the kustomization in `dir`; `yaml` is the npm `yaml` module.
export function render(dir, yaml) {
  const objects = build(yaml, path.resolve(dir));
  return objects.sort((a, b) => kindRank(a.kind) - kindRank(b.kind)
    || a.kind.localeCompare(b.kind) || a.metadata.name.localeCompare(b.metadata.name));
}

export function toYaml(objects, yaml) {
  return objects.map((o) => yaml.stringify(o)).join('---\n');
}

export async function loadDeps(depsFile) {
  if (depsFile) return import(pathToFileURL(path.resolve(depsFile)).href);
  return { yaml: await import('yaml') };
}

async function main(argv) {
  let deps = process.env.K8S_DEPS;
  const args = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--deps') deps = argv[++i];
    else args.push(argv[i]);
  }
  if (args.length !== 1) {
    console.error('usage: node render.mjs [--deps BUILD_DIR/npm-k8s/deps.mjs] KUSTOMIZATION_DIR');
    process.exit(2);
  }
  const { yaml } = await loadDeps(deps);
  process.stdout.write(toYaml(render(args[0], yaml), yaml));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).catch((e) => {
    console.error(e instanceof RenderError ? `render.mjs: ${e.message}` : e);
    process.exit(1);
  });
}
