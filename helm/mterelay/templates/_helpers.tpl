{{/* Names: DNS-1123 labels, at most 63 characters. */}}
{{- define "mterelay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mterelay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mterelay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mterelay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mterelay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mterelay.commonLabels" -}}
helm.sh/chart: {{ include "mterelay.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "mterelay.name" . }}
{{- end }}

{{- define "mterelay.labels" -}}
{{ include "mterelay.commonLabels" . }}
app.kubernetes.io/name: {{ include "mterelay.name" . }}
app.kubernetes.io/component: {{ .Values.role }}-relay
{{- end }}

{{- define "mterelay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mterelay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mterelay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret the relay reads CLIENT_ID_SECRET and friends from. */}}
{{- define "mterelay.secretName" -}}
{{- default (include "mterelay.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "mterelay.redisName" -}}
{{- printf "%s-redis" (include "mterelay.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "true" when replicas share pair state through some Redis. */}}
{{- define "mterelay.hasRedis" -}}
{{- if or .Values.redis.url .Values.redis.internal.enabled .Values.secrets.redisUrl .Values.redis.inExistingSecret }}true{{ end }}
{{- end }}

{{- define "mterelay.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The relay's configuration file: the seed's YAML keys. */}}
{{- define "mterelay.configFile" -}}
{{- $generated := dict "upstream" .Values.upstream "port" (int .Values.containerPort) }}
{{- if .Values.redis.url }}
{{- $_ := set $generated "redisURL" .Values.redis.url }}
{{- end }}
{{- toYaml (merge $generated (deepCopy .Values.config)) }}
{{- end }}

{{/* Refuse combinations that would deploy but not work. */}}
{{- define "mterelay.checks" -}}
{{- $upstream := required "upstream is required (the API the relay forwards to)" .Values.upstream }}
{{- if not (or .Values.secrets.existingSecret .Values.secrets.clientIdSecret) }}
{{- fail "set secrets.clientIdSecret or secrets.existingSecret (a Secret holding CLIENT_ID_SECRET)" }}
{{- end }}
{{- if and (eq .Values.role "inbound") (include "mterelay.multiReplica" .) (not (include "mterelay.hasRedis" .)) }}
{{- fail "an inbound relay with more than one replica needs shared pair state: set redis.url, secrets.redisUrl, redis.inExistingSecret or redis.internal.enabled" }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add (int .Values.shutdownGrace) (int .Values.preStopSleep)) }}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleep + shutdownGrace, or Kubernetes kills relays that are still finishing requests" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if and .Values.redis.internal.enabled (or .Values.redis.url .Values.secrets.redisUrl) }}
{{- fail "redis.internal.enabled and an external Redis (redis.url / secrets.redisUrl) exclude each other" }}
{{- end }}
{{- end }}
