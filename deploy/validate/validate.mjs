// Reads a JSON array of Kubernetes objects on stdin and checks each against the validator that
// @kubernetes-models generates from the platform's published CRD (Istio 1.29.2's crd-all.gen.yaml
// for @kubernetes-models/istio 3.0.1; Gateway API's Go types for @kubernetes-models/gateway-api
// 2.0.0). Prints a JSON array: one {kind, name, ok, error} per object. Kinds without a published
// validator here are reported with ok: null (the test decides what that means).
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin";
import { EnvoyFilter } from "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

const MODELS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": WasmPlugin,
  "networking.istio.io/v1alpha3/EnvoyFilter": EnvoyFilter,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((doc) => {
  const Model = MODELS[`${doc.apiVersion}/${doc.kind}`];
  const name = doc.metadata?.name;
  if (!Model) return { kind: doc.kind, name, ok: null, error: null };
  try {
    new Model(doc).validate();
    return { kind: doc.kind, name, ok: true, error: null };
  } catch (e) {
    return { kind: doc.kind, name, ok: false, error: String(e.message ?? e) };
  }
});
process.stdout.write(JSON.stringify(results));
