{{/* Names and wiring shared by the templates. */}}
{{- define "dynamo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "dynamo.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dynamo.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dynamo.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{/* Where frontends and workers find etcd: the built-in StatefulSet's Service, or yours. */}}
{{- define "dynamo.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
http://{{ include "dynamo.fullname" . }}-etcd:{{ .Values.etcd.clientPort }}
{{- else -}}
{{ required "etcd.endpoints is required when etcd.enabled is false" .Values.etcd.endpoints }}
{{- end -}}
{{- end -}}

{{- define "dynamo.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://{{ include "dynamo.fullname" . }}-nats:{{ .Values.nats.port }}
{{- else -}}
{{ required "nats.url is required when nats.enabled is false" .Values.nats.url }}
{{- end -}}
{{- end -}}

{{/* The environment every dynamo process shares: distributed discovery and planes. */}}
{{- define "dynamo.runtimeEnv" -}}
- name: DYN_NAMESPACE
  value: {{ .Values.dynamoNamespace | quote }}
- name: DYN_DISCOVERY
  value: etcd
- name: ETCD_ENDPOINTS
  value: {{ include "dynamo.etcdEndpoints" . | quote }}
- name: DYN_REQUEST_PLANE
  value: nats
- name: DYN_EVENT_PLANE
  value: nats
- name: NATS_SERVER
  value: {{ include "dynamo.natsUrl" . | quote }}
- name: DYN_LEASE_TTL
  value: {{ .Values.leaseTtlSeconds | quote }}
- name: DYN_LOG
  value: {{ .Values.logLevel | quote }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}
