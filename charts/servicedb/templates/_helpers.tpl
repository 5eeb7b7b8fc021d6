{{/* Chart name, overridable. */}}
{{- define "servicedb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: the release name, plus the chart name
unless the release name already contains it. */}}
{{- define "servicedb.fullname" -}}
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

{{- define "servicedb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods. They never change across
upgrades: a Deployment's selector is immutable, and the operator writes them
into every database's NetworkPolicy (SERVICEDB_POD_LABELS). */}}
{{- define "servicedb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "servicedb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The selector labels as `k=v,k=v`, for SERVICEDB_POD_LABELS. */}}
{{- define "servicedb.selectorLabelsFlag" -}}
{{- $pairs := list }}
{{- range $k, $v := (include "servicedb.selectorLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* A map of labels as a `k=v,k=v` flag value, keys sorted. */}}
{{- define "servicedb.labelsFlag" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Standard labels of every object of the chart. */}}
{{- define "servicedb.labels" -}}
helm.sh/chart: {{ include "servicedb.chart" . }}
{{ include "servicedb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: servicedb
{{- end }}

{{- define "servicedb.serviceAccountName" -}}
{{- default (include "servicedb.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The operator image, by digest when one is given. The same string goes to
the container and to SERVICEDB_IMAGE, so database pods copy the binary from
exactly the image the operator runs. */}}
{{- define "servicedb.image" -}}
{{- $repo := required "image.repository is required" .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}
