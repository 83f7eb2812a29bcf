{{/* Chart name, truncated to a DNS label. */}}
{{- define "kubefinops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name: "kubefinops" for release kubefinops, else "<release>-kubefinops". */}}
{{- define "kubefinops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kubefinops.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kubefinops.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubefinops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubefinops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end -}}

{{- define "kubefinops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubefinops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubefinops
{{- end -}}

{{- define "kubefinops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubefinops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A value as an env string: integral numbers without an exponent (JSON numbers arrive as float64). */}}
{{- define "kubefinops.envValue" -}}
{{- $v := . -}}
{{- if and (kindIs "float64" $v) (eq $v (float64 (int64 $v))) -}}
{{- int64 $v | toString -}}
{{- else -}}
{{- $v | toString -}}
{{- end -}}
{{- end -}}

{{/*
Secret wiring table: name in values -> settings field. "file" mode is only offered where
engine/settings.py has a *_file variant.
*/}}
{{- define "kubefinops.secretFields" -}}
kafkaPassword: kafka_password
mongodbUri: mongodb_uri
s3AccessKey: s3_access_key
s3SecretKey: s3_secret_key
gitToken: git_token
apiToken: api_token
apiReadToken: api_read_token
kafkaSslKeyPassword: kafka_ssl_key_password
prometheusPassword: prometheus_password
{{- end -}}

{{- define "kubefinops.secretMountDir" -}}/var/run/secrets/kubefinops{{- end -}}

{{/* Refuse combinations that cannot work, with one clear line. */}}
{{- define "kubefinops.validate" -}}
{{- $partitions := int64 (default 8 .Values.config.topic_partitions) -}}
{{- if gt (int64 .Values.replicaCount) $partitions -}}
{{- fail (printf "replicaCount (%d) must be <= config.topic_partitions (%d): a worker without a partition sits idle" (int64 .Values.replicaCount) $partitions) -}}
{{- end -}}
{{- if and .Values.persistence.enabled (eq .Values.persistence.accessMode "ReadWriteOnce") (gt (int64 .Values.replicaCount) 1) -}}
{{- fail "persistence.enabled with accessMode ReadWriteOnce needs replicaCount 1 (use the emptyDir default: table state is rebuilt from the Kafka changelogs)" -}}
{{- end -}}
{{- end -}}
