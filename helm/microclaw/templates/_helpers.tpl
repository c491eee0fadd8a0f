{{/*
Names. The full name is kept to 42 characters so role suffixes such as
"-discord-gateway" still fit in a 63-character name.
*/}}
{{- define "microclaw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "microclaw.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "microclaw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: only the immutable subset. Argument: dict "root" $ "component" "receiver" */}}
{{- define "microclaw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "microclaw.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Standard labels. Argument: dict "root" $ "component" "receiver" (component may be "") */}}
{{- define "microclaw.labels" -}}
helm.sh/chart: {{ include "microclaw.chart" .root }}
{{ include "microclaw.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: microclaw
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "microclaw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "microclaw.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "microclaw.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True when the migration Job and what it needs are Helm hooks. */}}
{{- define "microclaw.migrationHooks" -}}
{{- if and .Values.migrations.enabled .Values.migrations.useHelmHooks }}true{{ end }}
{{- end }}

{{/* The Secret the chart renders for URLs given inline (database.url, redis.url). */}}
{{- define "microclaw.urlSecretName" -}}
{{- printf "%s-urls" (include "microclaw.fullname" .) }}
{{- end }}

{{- define "microclaw.renderUrlSecret" -}}
{{- if or (and .Values.database.url (not .Values.database.existingSecret.name)) (and .Values.redis.url (not .Values.redis.existingSecret.name)) }}true{{ end }}
{{- end }}

{{/* Where the database URL comes from: dict name, key. Fails when nothing is configured. */}}
{{- define "microclaw.databaseSecretRef" -}}
{{- if and .Values.database.url .Values.database.existingSecret.name }}
{{- fail "database: set either database.url or database.existingSecret.name, not both" }}
{{- end }}
{{- if .Values.database.existingSecret.name }}
{{- if not .Values.database.existingSecret.key }}
{{- fail "database.existingSecret.key: name the key of the Secret that holds the URL" }}
{{- end }}
{{- dict "name" .Values.database.existingSecret.name "key" .Values.database.existingSecret.key | toJson }}
{{- else if .Values.database.url }}
{{- dict "name" (include "microclaw.urlSecretName" .) "key" "DATABASE_URL" | toJson }}
{{- else }}
{{- fail "database: set database.existingSecret.name (recommended) or database.url; MicroClaw needs Postgres" }}
{{- end }}
{{- end }}

{{/* Where the Redis URL comes from: dict name, key, or {} without Redis. */}}
{{- define "microclaw.redisSecretRef" -}}
{{- if and .Values.redis.url .Values.redis.existingSecret.name }}
{{- fail "redis: set either redis.url or redis.existingSecret.name, not both" }}
{{- end }}
{{- if .Values.redis.existingSecret.name }}
{{- if not .Values.redis.existingSecret.key }}
{{- fail "redis.existingSecret.key: name the key of the Secret that holds the URL" }}
{{- end }}
{{- dict "name" .Values.redis.existingSecret.name "key" .Values.redis.existingSecret.key | toJson }}
{{- else if .Values.redis.url }}
{{- dict "name" (include "microclaw.urlSecretName" .) "key" "REDIS_URL" | toJson }}
{{- else }}
{{- dict | toJson }}
{{- end }}
{{- end }}

{{/*
The configuration as TOML. A string is used as written. A map is written with
toToml after turning whole numbers back into integers: Helm reads every YAML
number as a float, and "max_connections = 20.0" would not load into an integer key.
*/}}
{{- define "microclaw.configToml" -}}
{{- if kindIs "string" .Values.config }}
{{- .Values.config }}
{{- else }}
{{- $config := deepCopy (default dict .Values.config) }}
{{- include "microclaw.wholeNumbers" $config }}
{{- toToml $config }}
{{- end }}
{{- end }}

{{/* Rewrites whole float64 values of a map (recursively, through lists) as int64, in place. */}}
{{- define "microclaw.wholeNumbers" -}}
{{- $map := . }}
{{- range $key, $value := $map }}
{{- if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}{{ $_ := set $map $key (int64 $value) }}{{ end }}
{{- else if kindIs "map" $value }}
{{- include "microclaw.wholeNumbers" $value }}
{{- else if kindIs "slice" $value }}
{{- $items := list }}
{{- range $value }}
{{- if kindIs "float64" . }}
{{- $items = append $items (ternary (int64 .) . (eq . (floor .))) }}
{{- else }}
{{- if kindIs "map" . }}{{ include "microclaw.wholeNumbers" . }}{{ end }}
{{- $items = append $items . }}
{{- end }}
{{- end }}
{{- $_ := set $map $key $items }}
{{- end }}
{{- end }}
{{- end }}

{{/* The configuration parsed (JSON of a map), for checks and NOTES. Fails on invalid TOML. */}}
{{- define "microclaw.configData" -}}
{{- if kindIs "string" .Values.config }}
{{- $parsed := fromToml .Values.config }}
{{- if hasKey $parsed "Error" }}
{{- fail (printf "config is not valid TOML: %v" (get $parsed "Error")) }}
{{- end }}
{{- toJson $parsed }}
{{- else }}
{{- toJson (default dict .Values.config) }}
{{- end }}
{{- end }}

{{/*
The connectors the deployment serves: those of the config, or the built-in
default (the custom connector) when the config declares none.
*/}}
{{- define "microclaw.connectors" -}}
{{- $config := include "microclaw.configData" . | fromJson }}
{{- $connectors := default list (get $config "connectors") }}
{{- if not $connectors }}
{{- $connectors = list (dict "id" "custom" "channel" "custom" "builtin" true) }}
{{- end }}
{{- dict "items" $connectors | toJson }}
{{- end }}

{{/* Checks that span several values; included once by the ConfigMap. */}}
{{- define "microclaw.validate" -}}
{{- $config := include "microclaw.configData" . | fromJson }}
{{- $db := get $config "database" | default dict }}
{{- if hasKey $db "url" }}
{{- fail "config.database.url: the chart sets the database URL from database.url or database.existingSecret (MICROCLAW_DATABASE__URL); remove it from config" }}
{{- end }}
{{- $redis := get $config "redis" | default dict }}
{{- if and (get $redis "url") (or .Values.redis.url .Values.redis.existingSecret.name) }}
{{- fail "config.redis.url is set and so is redis.url/redis.existingSecret: give the Redis URL once" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled .Values.worker.keda.enabled }}
{{- fail "worker.autoscaling.enabled and worker.keda.enabled are both true: one Deployment can have one autoscaler (KEDA creates its own HPA); enable only one" }}
{{- end }}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) (int .Values.worker.shutdownGraceSeconds) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be longer than worker.shutdownGraceSeconds (%v), or in-flight jobs are killed mid-way" .Values.worker.terminationGracePeriodSeconds .Values.worker.shutdownGraceSeconds) }}
{{- end }}
{{- if le (int .Values.receiver.terminationGracePeriodSeconds) (int .Values.receiver.preStopSleepSeconds) }}
{{- fail (printf "receiver.terminationGracePeriodSeconds (%v) must be longer than receiver.preStopSleepSeconds (%v)" .Values.receiver.terminationGracePeriodSeconds .Values.receiver.preStopSleepSeconds) }}
{{- end }}
{{- if .Values.discordGateway.enabled }}
{{- $gateways := 0 }}
{{- range (include "microclaw.connectors" . | fromJson).items }}
{{- if and (eq (toString .channel) "discord") .gateway }}{{ $gateways = add1 $gateways }}{{ end }}
{{- end }}
{{- if eq $gateways 0 }}
{{- fail "discordGateway.enabled: no connector in config has channel = \"discord\" and gateway = true; the discord-gateway role would exit" }}
{{- end }}
{{- end }}
{{- if .Values.metrics.serviceMonitor.enabled }}
{{- if not (or (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}
{{- fail "metrics.serviceMonitor.enabled: the cluster has no monitoring.coreos.com/v1 API (ServiceMonitor); install the Prometheus Operator CRDs, or with helm template pass --api-versions monitoring.coreos.com/v1" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The rendered config's checksum (pods roll when it changes). */}}
{{- define "microclaw.configChecksum" -}}
{{- include "microclaw.configToml" . | sha256sum }}
{{- end }}

{{/* The chart-rendered URL Secret's checksum ("" when the chart renders none). */}}
{{- define "microclaw.secretChecksum" -}}
{{- if include "microclaw.renderUrlSecret" . }}
{{- printf "%s|%s" .Values.database.url .Values.redis.url | sha256sum }}
{{- end }}
{{- end }}

{{/*
Environment of a MicroClaw container: what the chart sets, then the global and the
role's extraEnv merged by name (the role wins). A name the chart sets itself is
refused, so no container ever lists one name twice (server-side apply rejects it).
Argument: dict "root" $ "values" <role values> "valuesPath" "receiver" "env" <list of EnvVar>
*/}}
{{- define "microclaw.env" -}}
{{- $root := .root }}
{{- $secretRef := include "microclaw.databaseSecretRef" $root | fromJson }}
{{- $env := list
  (dict "name" "MICROCLAW_CONFIG" "value" "/etc/microclaw/microclaw.toml")
  (dict "name" "MICROCLAW_DATABASE__URL" "valueFrom" (dict "secretKeyRef" (dict "name" $secretRef.name "key" $secretRef.key))) }}
{{- $redisRef := include "microclaw.redisSecretRef" $root | fromJson }}
{{- if $redisRef.name }}
{{- $env = append $env (dict "name" "MICROCLAW_REDIS__URL" "valueFrom" (dict "secretKeyRef" (dict "name" $redisRef.name "key" $redisRef.key))) }}
{{- end }}
{{- $env = concat $env (default list .env) }}
{{- $reserved := dict }}
{{- range $env }}{{ $_ := set $reserved .name true }}{{ end }}
{{- $extra := dict }}
{{- $order := list }}
{{- range $source := list (dict "path" "extraEnv" "items" $root.Values.extraEnv) (dict "path" (printf "%s.extraEnv" .valuesPath) "items" .values.extraEnv) }}
{{- range $source.items }}
{{- if hasKey $reserved .name }}
{{- fail (printf "%s: %s is set by the chart; use the chart's values instead" $source.path .name) }}
{{- end }}
{{- if not (hasKey $extra .name) }}{{ $order = append $order .name }}{{ end }}
{{- $_ := set $extra .name . }}
{{- end }}
{{- end }}
{{- range $order }}{{ $env = append $env (get $extra .) }}{{ end }}
{{- toYaml $env }}
{{- end }}

{{- define "microclaw.envFrom" -}}
{{- $from := list }}
{{- range .Values.envFromSecrets }}
{{- $from = append $from (dict "secretRef" (dict "name" .)) }}
{{- end }}
{{- $from = concat $from .Values.extraEnvFrom }}
{{- if $from }}
{{- toYaml $from }}
{{- end }}
{{- end }}

{{- define "microclaw.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "microclaw.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* An HTTP probe on the role's port. Argument: dict "path" "/healthz" "timing" <probe values> */}}
{{- define "microclaw.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{- toYaml .timing | nindent 0 }}
{{- end }}

{{/*
The pod template of a role (metadata and spec).
Argument: dict
  "root" $, "component" "receiver", "values" <role values>, "valuesPath" "receiver",
  "args" (list "receiver"), "env" <extra chart env>, "port" <int or 0>,
  "preStopSleep" <int or 0>, "restartPolicy" "" or "Never",
  "serviceAccountName" <name>, "podAnnotations", "podLabels"
*/}}
{{- define "microclaw.podTemplate" -}}
{{- $root := .root }}
{{- $v := .values -}}
metadata:
  labels:
    {{- include "microclaw.labels" (dict "root" $root "component" .component) | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "microclaw.configChecksum" $root }}
    {{- with include "microclaw.secretChecksum" $root }}
    checksum/secret: {{ . }}
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ .serviceAccountName | default (include "microclaw.serviceAccountName" $root) }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with .restartPolicy }}
  restartPolicy: {{ . }}
  {{- end }}
  {{- with $v.terminationGracePeriodSeconds }}
  terminationGracePeriodSeconds: {{ . }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "microclaw.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "microclaw.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "microclaw.env" (dict "root" $root "values" $v "valuesPath" .valuesPath "env" .env) | nindent 8 }}
      {{- with include "microclaw.envFrom" $root }}
      envFrom:
        {{- . | nindent 8 }}
      {{- end }}
      {{- if .port }}
      ports:
        - name: http
          containerPort: {{ .port }}
          protocol: TCP
      startupProbe:
        {{- include "microclaw.probe" (dict "path" "/healthz" "timing" $v.probes.startup) | nindent 8 }}
      livenessProbe:
        {{- include "microclaw.probe" (dict "path" "/healthz" "timing" $v.probes.liveness) | nindent 8 }}
      readinessProbe:
        {{- include "microclaw.probe" (dict "path" "/readyz" "timing" $v.probes.readiness) | nindent 8 }}
      {{- end }}
      {{- if .preStopSleep }}
      lifecycle:
        preStop:
          sleep:
            seconds: {{ .preStopSleep }}
      {{- end }}
      {{- with $v.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "microclaw.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/microclaw
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ .configMapName | default (include "microclaw.fullname" $root) }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The replica count a role starts from when no autoscaler owns it, else the autoscaler's minimum. */}}
{{- define "microclaw.minReplicas" -}}
{{- $v := .values }}
{{- if and .keda $v.keda.enabled }}{{ $v.keda.minReplicaCount }}
{{- else if and $v.autoscaling $v.autoscaling.enabled }}{{ $v.autoscaling.minReplicas }}
{{- else }}{{ $v.replicas }}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget, only when the role keeps more than one replica. Argument: dict root component values keda */}}
{{- define "microclaw.pdb" -}}
{{- $v := .values }}
{{- if and $v.pdb.enabled (gt (int (include "microclaw.minReplicas" .)) 1) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "microclaw.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "microclaw.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  {{- if ne (toString $v.pdb.minAvailable) "" }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $v.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "microclaw.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end }}

{{/* An autoscaling/v2 HPA for a role. Argument: dict root component values */}}
{{- define "microclaw.hpa" -}}
{{- $a := .values.autoscaling }}
{{- if $a.enabled }}
{{- if lt (int $a.maxReplicas) (int $a.minReplicas) }}
{{- fail (printf "%s.autoscaling.maxReplicas must be at least minReplicas" .component) }}
{{- end }}
{{- if and (not $a.targetCPUUtilizationPercentage) (not $a.targetMemoryUtilizationPercentage) }}
{{- fail (printf "%s.autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" .component) }}
{{- end }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "microclaw.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "microclaw.labels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "microclaw.fullname" .root }}-{{ .component }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* An Ingress. Argument: dict root component values serviceName servicePort */}}
{{- define "microclaw.ingress" -}}
{{- $i := .values.ingress }}
{{- if $i.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {{ include "microclaw.fullname" .root }}-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "microclaw.labels" (dict "root" .root "component" .component) | nindent 4 }}
  {{- with $i.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $i.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- with $i.tls }}
  tls:
    {{- range . }}
    - secretName: {{ .secretName }}
      {{- with .hosts }}
      hosts:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
  {{- end }}
  rules:
    {{- range $i.hosts }}
    - host: {{ .host | quote }}
      http:
        paths:
          {{- range .paths }}
          - path: {{ .path }}
            pathType: {{ .pathType }}
            backend:
              service:
                name: {{ $.serviceName }}
                port:
                  name: http
          {{- end }}
    {{- end }}
{{- end }}
{{- end }}

{{/* Base URL of an ingress (first host) or "". Argument: values.ingress */}}
{{- define "microclaw.ingressUrl" -}}
{{- if and .enabled .hosts }}
{{- $host := (first .hosts).host }}
{{- $tls := false }}
{{- range .tls }}{{ if or (not .hosts) (has $host .hosts) }}{{ $tls = true }}{{ end }}{{ end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- end }}
{{- end }}
