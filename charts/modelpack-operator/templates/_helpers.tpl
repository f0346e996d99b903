{{- define "modelpack-operator.name" -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}

{{- define "modelpack-operator.labels" -}}
app.kubernetes.io/name: modelpack-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "modelpack-operator.selector" -}}
app.kubernetes.io/name: modelpack-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelpack-operator.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
