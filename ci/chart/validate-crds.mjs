// Validates the custom resources in rendered chart output against the CRD schemas
// shipped (ajv-compiled) in @kubernetes-models/keda and @kubernetes-models/prometheus-operator.
// kubernetes-validate covers the built-in kinds and only warns about these.
//
// Usage: node validate-crds.mjs rendered.yaml [...]
// Prints "CRD objects checked: N, invalid: M" (not a test-count line) and exits 1 on
// any invalid object or on a kind of these API groups it has no model for.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import yaml from "js-yaml";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

const models = new Map([
  ["keda.sh/v1alpha1/ScaledObject", ScaledObject],
  ["keda.sh/v1alpha1/TriggerAuthentication", TriggerAuthentication],
  ["monitoring.coreos.com/v1/ServiceMonitor", ServiceMonitor],
]);
const customGroups = ["keda.sh/", "monitoring.coreos.com/"];

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate-crds.mjs FILE...");
  process.exit(2);
}

let checked = 0;
let invalid = 0;
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || typeof doc !== "object") continue;
    const id = `${doc.apiVersion}/${doc.kind}`;
    const Model = models.get(id);
    if (!Model) {
      if (customGroups.some((g) => String(doc.apiVersion).startsWith(g))) {
        console.error(`ERROR ${basename(file)}: no schema for ${id} (${doc.metadata?.name})`);
        invalid++;
      }
      continue;
    }
    checked++;
    try {
      new Model(doc).validate();
    } catch (err) {
      invalid++;
      const details = (err.errors ?? []).map((e) => `${e.instancePath} ${e.message}`).join("; ");
      console.error(`ERROR ${basename(file)}: ${doc.kind} ${doc.metadata?.name}: ${details || err.message}`);
    }
  }
}
console.log(`CRD objects checked: ${checked}, invalid: ${invalid}`);
process.exit(invalid === 0 ? 0 : 1);
