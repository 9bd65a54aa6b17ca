{{/*
The chart name, or nameOverride.
*/}}
{{- define "nodecsr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every object: fullnameOverride, else the release name
(plus the chart name unless the release name contains it). Truncated so that
the longest suffix the chart adds ("-serving-cert", 13 characters) keeps
names within 63 characters.
*/}}
{{- define "nodecsr.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart label value: name-version.
*/}}
{{- define "nodecsr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "nodecsr.labels" -}}
helm.sh/chart: {{ include "nodecsr.chart" . }}
{{ include "nodecsr.selectorLabels" . }}
app.kubernetes.io/version: {{ include "nodecsr.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nodecsr
{{- end }}

{{/*
Labels that select the controller's pods.
*/}}
{{- define "nodecsr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodecsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
The ServiceAccount's name.
*/}}
{{- define "nodecsr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nodecsr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The username nodecsr-controller authenticates as: its ServiceAccount.
*/}}
{{- define "nodecsr.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "nodecsr.serviceAccountName" .) }}
{{- end }}

{{/*
The image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "nodecsr.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The image reference: repository:tag, or repository@digest when a digest is set.
*/}}
{{- define "nodecsr.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "nodecsr.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Names of the webhook's TLS objects.
*/}}
{{- define "nodecsr.servingCertificateName" -}}
{{- printf "%s-serving" (include "nodecsr.fullname" .) }}
{{- end }}

{{- define "nodecsr.servingSecretName" -}}
{{- if .Values.webhook.certManager.enabled }}
{{- printf "%s-serving-cert" (include "nodecsr.fullname" .) }}
{{- else }}
{{- .Values.webhook.tls.secretName }}
{{- end }}
{{- end }}

{{/*
Paths inside the container.
*/}}
{{- define "nodecsr.policyDir" -}}/etc/nodecsr/policy{{- end }}
{{- define "nodecsr.policyFile" -}}/etc/nodecsr/policy/policy.yaml{{- end }}
{{- define "nodecsr.webhookCertDir" -}}/etc/nodecsr/webhook-tls{{- end }}

{{/*
The restricted container security context (Pod Security Standards
"restricted"), shared by the controller and the test Pod.
*/}}
{{- define "nodecsr.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "nodecsr.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The full policy document rendered from .Values.policy (the spec).
*/}}
{{- define "nodecsr.policyDocument" -}}
{{- $policy := deepCopy (.Values.policy | default dict) }}
{{- if .Values.serving.enabled }}
{{- $serving := deepCopy (get $policy "serving" | default dict) }}
{{- $_ := set $serving "enabled" true }}
{{- $_ := set $policy "serving" $serving }}
{{- end }}
apiVersion: nodecsr.io/v1alpha1
kind: Policy
{{- if $policy }}
spec:
  {{- toYaml $policy | nindent 2 }}
{{- else }}
spec: {}
{{- end }}
{{- end }}

{{/*
Impossible combinations of values fail the render with a message that names
the values to change. Included by the Deployment, which every install has.
*/}}
{{- define "nodecsr.validate" -}}
{{- $v := .Values }}
{{- /* Kubernetes 1.30 or later. Not a kubeVersion constraint in Chart.yaml:
       `helm template` without --kube-version (as GitOps tools render) assumes
       Kubernetes v1.20.0 while offering the APIs of Helm's own client, among
       them flowcontrol.apiserver.k8s.io/v1 (GA in 1.29), which no real
       v1.20.0 cluster serves; that combination is Helm's offline default. */}}
{{- $kv := .Capabilities.KubeVersion.Version }}
{{- $offline := and (eq $kv "v1.20.0") (.Capabilities.APIVersions.Has "flowcontrol.apiserver.k8s.io/v1") }}
{{- if and (semverCompare "<1.30.0-0" $kv) (not $offline) }}
{{- fail (printf "nodecsr needs Kubernetes 1.30 or later; this cluster is %s" $kv) }}
{{- end }}
{{- if and (gt (int $v.replicaCount) 1) (not $v.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but leaderElection.enabled is false: several replicas would decide the same CSRs; set leaderElection.enabled=true or replicaCount=1" (int $v.replicaCount)) }}
{{- end }}
{{- $policyServing := get ($v.policy | default dict) "serving" | default dict }}
{{- if and (hasKey $policyServing "enabled") (ne (toString (get $policyServing "enabled")) (toString $v.serving.enabled)) }}
{{- fail (printf "policy.serving.enabled is %v but serving.enabled is %v: set serving.enabled only; it sets the policy's serving.enabled, the RBAC on the kubelet-serving signer and the webhooks' signers together" (get $policyServing "enabled") $v.serving.enabled) }}
{{- end }}
{{- if and (not $v.serviceAccount.create) (not $v.serviceAccount.name) }}
{{- fail "serviceAccount.create is false, so serviceAccount.name must name an existing ServiceAccount" }}
{{- end }}
{{- if $v.webhook.enabled }}
{{- $cm := $v.webhook.certManager.enabled }}
{{- $own := or $v.webhook.tls.secretName $v.webhook.tls.caBundle }}
{{- if and $cm $own }}
{{- fail "webhook TLS: give one source, either webhook.certManager.enabled=true or webhook.tls.secretName and webhook.tls.caBundle, not both" }}
{{- end }}
{{- if and (not $cm) (not (and $v.webhook.tls.secretName $v.webhook.tls.caBundle)) }}
{{- fail "webhook.enabled is true but the webhook has no TLS source: set webhook.certManager.enabled=true (cert-manager issues the serving certificate), or set both webhook.tls.secretName (an existing kubernetes.io/tls Secret) and webhook.tls.caBundle (its CA, base64 PEM); or set webhook.enabled=false" }}
{{- end }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (gt (int $v.replicaCount) 1) (ge (int $v.podDisruptionBudget.minAvailable) (int $v.replicaCount)) }}
{{- fail (printf "podDisruptionBudget.minAvailable (%d) must be lower than replicaCount (%d), or no node running nodecsr could ever be drained" (int $v.podDisruptionBudget.minAvailable) (int $v.replicaCount)) }}
{{- end }}
{{- $ports := list (int $v.metrics.port) (int $v.healthProbe.port) }}
{{- if $v.webhook.enabled }}{{ $ports = append $ports (int $v.webhook.port) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "metrics.port, healthProbe.port and webhook.port must differ, got %v" $ports) }}
{{- end }}
{{- end }}

{{/*
Parts of the webhook configurations (webhook.yaml).
*/}}
{{- /* Takes (dict "root" $ "hook" bool): with hook, the metadata of the
       pre-delete hook copy (webhook.yaml). */}}
{{- define "nodecsr.webhookMeta" -}}
{{- $r := .root -}}
name: {{ include "nodecsr.fullname" $r }}
labels:
  {{- include "nodecsr.labels" $r | nindent 2 }}
{{- if or $r.Values.webhook.certManager.enabled .hook }}
annotations:
  {{- if $r.Values.webhook.certManager.enabled }}
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" $r.Release.Namespace (include "nodecsr.servingCertificateName" $r) }}
  {{- end }}
  {{- if .hook }}
  helm.sh/hook: pre-delete
  helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
  {{- end }}
{{- end }}
{{- end }}
{{- define "nodecsr.webhookClientConfig" -}}
clientConfig:
  service:
    namespace: {{ .root.Release.Namespace }}
    name: {{ include "nodecsr.fullname" .root }}
    port: 443
    path: {{ .path }}
  {{- if not .root.Values.webhook.certManager.enabled }}
  caBundle: {{ .root.Values.webhook.tls.caBundle }}
  {{- end }}
{{- end }}
{{- define "nodecsr.kubeletSignerMatch" -}}
{{- if .Values.serving.enabled }}
- name: kubelet-signers
  expression: 'object.spec.signerName in ["kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"]'
{{- else }}
- name: kubelet-client-signer
  expression: 'object.spec.signerName == "kubernetes.io/kube-apiserver-client-kubelet"'
{{- end }}
{{- end }}
