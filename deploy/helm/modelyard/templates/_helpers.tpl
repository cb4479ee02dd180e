{{/* The release's name, or <release>-modelyard when the release does not say modelyard. */}}
{{- define "modelyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "modelyard.labels" -}}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "modelyard.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-cuda" "" .Values.gpu.enabled)) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{- define "modelyard.secretName" -}}
{{- .Values.secret.name | default (printf "%s-secrets" (include "modelyard.fullname" .)) -}}
{{- end -}}

{{- define "modelyard.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "modelyard.fullname" .) -}}
{{- end -}}

{{- define "modelyard.artifactsOnS3" -}}
{{- if hasPrefix "s3://" .Values.artifacts.url }}true{{ end -}}
{{- end -}}

{{- define "modelyard.alertsMounted" -}}
{{- if or .Values.alerts.rules .Values.alerts.existingSecret }}true{{ end -}}
{{- end -}}

{{/* One secret key as an env entry. */}}
{{- define "modelyard.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/* The environment of every modelyard container (the ConfigMap comes through envFrom). */}}
{{- define "modelyard.env" -}}
{{- $secret := include "modelyard.secretName" . -}}
{{ include "modelyard.secretEnv" (dict "env" "MODELYARD_STORE_URL" "secret" $secret "key" .Values.secret.keys.storeUrl) }}
{{ include "modelyard.secretEnv" (dict "env" "MODELYARD_AUDIT_KEY" "secret" $secret "key" .Values.secret.keys.auditKey) }}
{{- if and (include "modelyard.artifactsOnS3" .) .Values.artifacts.s3.credentialsFromSecret }}
{{ include "modelyard.secretEnv" (dict "env" "AWS_ACCESS_KEY_ID" "secret" $secret "key" .Values.secret.keys.awsAccessKeyId) }}
{{ include "modelyard.secretEnv" (dict "env" "AWS_SECRET_ACCESS_KEY" "secret" $secret "key" .Values.secret.keys.awsSecretAccessKey) }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every modelyard pod has: its home, /tmp, the user's home, the artifacts. */}}
{{- define "modelyard.volumes" -}}
- name: home
  {{- if include "modelyard.artifactsOnS3" . }}
  emptyDir:
    sizeLimit: {{ .Values.artifacts.cacheSizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
- name: user-home
  emptyDir: {}
{{- if not (include "modelyard.artifactsOnS3" .) }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ required "set artifacts.url (s3://...) or artifacts.existingClaim" .Values.artifacts.existingClaim }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "modelyard.volumeMounts" -}}
- name: home
  mountPath: /var/lib/modelyard
- name: tmp
  mountPath: /tmp
- name: user-home
  mountPath: /home/modelyard
{{- if not (include "modelyard.artifactsOnS3" .) }}
- name: artifacts
  mountPath: /var/lib/modelyard/artifacts
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The alert rules at <home>/alerts.yml, where the controller runs. */}}
{{- define "modelyard.alertsVolume" -}}
- name: alerts
  {{- if .Values.alerts.existingSecret }}
  secret:
    secretName: {{ .Values.alerts.existingSecret }}
  {{- else }}
  configMap:
    name: {{ include "modelyard.fullname" . }}-alerts
  {{- end }}
{{- end -}}

{{- define "modelyard.alertsMount" -}}
- name: alerts
  mountPath: /var/lib/modelyard/alerts.yml
  subPath: alerts.yml
  readOnly: true
{{- end -}}
