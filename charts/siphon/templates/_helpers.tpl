{{- define "siphon.fullname" -}}{{ .Release.Name }}-siphon{{- end -}}
{{- define "siphon.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "siphon.labels" -}}
app.kubernetes.io/name: siphon
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}
{{- define "siphon.selector" -}}
app.kubernetes.io/name: siphon
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{/* The namespaces whose captures the operator reconciles, comma separated; empty: all. */}}
{{- define "siphon.watchNamespaces" -}}{{ join "," .Values.watchNamespaces }}{{- end -}}
{{/* The namespaces worker pods run in: the watched ones, or (empty) every namespace. */}}
{{- define "siphon.workerNamespaces" -}}
{{- if .Values.metrics.podMonitor.namespaces -}}{{ toJson .Values.metrics.podMonitor.namespaces }}{{- else -}}{{ toJson .Values.watchNamespaces }}{{- end -}}
{{- end -}}
{{/* The names of imagePullSecrets, comma separated. */}}
{{- define "siphon.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets -}}{{- $names = append $names .name -}}{{- end -}}
{{ join "," $names }}
{{- end -}}
