{{- define "siphon.fullname" -}}{{ .Release.Name }}-siphon{{- end -}}
{{- define "siphon.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "siphon.labels" -}}
app.kubernetes.io/name: siphon
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "siphon.selector" -}}
app.kubernetes.io/name: siphon
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
