{{- define "monitor.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "monitor.labels" -}}
app.kubernetes.io/name: monitor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "monitor.socketFlag" -}}
{{- if has .Values.containerRuntime.kind (list "docker" "podman") -}}
--docker-socket={{ .Values.containerRuntime.socket }}
{{- else -}}
--cri-socket={{ .Values.containerRuntime.socket }}
{{- end -}}
{{- end -}}
